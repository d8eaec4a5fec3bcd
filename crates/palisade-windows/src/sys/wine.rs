//! Detection of Wine, which runs palisade's Windows tests on Linux but enforces neither ACLs,
//! tokens, job limits nor firewall filters. Tests of those print a SKIP line under Wine.

use windows_sys::Win32::System::LibraryLoader::{GetModuleHandleW, GetProcAddress};

/// Returns Wine's version (such as `"8.0"`) when this process runs under Wine, `None` on
/// Windows. Wine's `ntdll.dll` exports `wine_get_version`; Windows' does not.
pub fn is_wine() -> Option<String> {
    let ntdll: Vec<u16> = "ntdll.dll\0".encode_utf16().collect();
    // SAFETY: the name is NUL-terminated, and ntdll.dll is loaded in every Windows process, so
    // the module handle needs no reference count and stays valid.
    let module = unsafe { GetModuleHandleW(ntdll.as_ptr()) };
    if module.is_null() {
        return None;
    }
    // SAFETY: the module handle is valid (above) and the name is a NUL-terminated ANSI string.
    let function = unsafe { GetProcAddress(module, c"wine_get_version".as_ptr().cast()) }?;
    // SAFETY: Wine declares `const char *wine_get_version(void)`, returning a static
    // NUL-terminated string; the transmute only gives the address that signature.
    let get_version: unsafe extern "C" fn() -> *const std::ffi::c_char = unsafe { std::mem::transmute(function) };
    // SAFETY: the function takes no arguments and returns a pointer to a static string.
    let version = unsafe { get_version() };
    if version.is_null() {
        return Some(String::new());
    }
    // SAFETY: the pointer is non-null and points to Wine's static NUL-terminated string.
    Some(unsafe { std::ffi::CStr::from_ptr(version) }.to_string_lossy().into_owned())
}
