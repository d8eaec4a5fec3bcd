//! Facts about this Mac and this run that the profile and the limits depend on.

use std::ffi::{c_void, CStr, CString};
use std::io;
use std::path::PathBuf;

use palisade_policy::Policy;

use crate::request::Machine;

/// Returns the machine of a run of `policy`, with the proxy's port when the run has one.
pub fn current(policy: &Policy, proxy_port: Option<u16>) -> io::Result<Machine> {
    let path_dirs = policy
        .env
        .iter()
        .find(|var| var.name == "PATH")
        .map(|var| std::env::split_paths(&var.value).collect())
        .unwrap_or_default();
    Ok(Machine {
        home: policy.home.clone(),
        temp_dir: user_dir(libc::_CS_DARWIN_USER_TEMP_DIR, "temporary")?,
        cache_dir: user_dir(libc::_CS_DARWIN_USER_CACHE_DIR, "cache")?,
        path_dirs,
        proxy_port,
        run_id: random_run_id(),
    })
}

/// Returns one of the per-user directories below `/var/folders` through confstr(3).
fn user_dir(name: libc::c_int, what: &str) -> io::Result<PathBuf> {
    let mut buffer = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: the buffer's length is passed as its size, which bounds what confstr writes.
    let length = unsafe { libc::confstr(name, buffer.as_mut_ptr().cast(), buffer.len()) };
    if length == 0 || length > buffer.len() {
        let cause = io::Error::last_os_error();
        return Err(io::Error::new(cause.kind(), format!("failed to read the per-user {what} directory with confstr: {cause}")));
    }
    let text = CStr::from_bytes_until_nul(&buffer).map_err(|_| io::Error::other(format!("the per-user {what} directory is not terminated")))?;
    Ok(PathBuf::from(text.to_string_lossy().into_owned()))
}

/// Returns a run id of 32 random hexadecimal digits.
pub(crate) fn random_run_id() -> String {
    let mut bytes = [0u8; 16];
    // SAFETY: arc4random_buf writes exactly the given number of bytes, the buffer's length, and
    // returns nothing (arc4random(3)).
    unsafe { libc::arc4random_buf(bytes.as_mut_ptr().cast::<c_void>(), bytes.len()) };
    bytes.iter().fold(String::with_capacity(2 * bytes.len()), |mut id, byte| {
        let _ = std::fmt::Write::write_fmt(&mut id, format_args!("{byte:02x}"));
        id
    })
}

/// Returns the machine's memory in bytes (`hw.memsize`), for the profile's default limits.
pub fn memory_total() -> Option<u64> {
    let mut value: u64 = 0;
    let mut size = std::mem::size_of::<u64>();
    let name = CString::new("hw.memsize").ok()?;
    // SAFETY: `value` has room for the `size` bytes the call may write, and `size` is updated
    // with what it wrote; no new value is set.
    let status = unsafe { libc::sysctlbyname(name.as_ptr(), (&raw mut value).cast::<c_void>(), &mut size, std::ptr::null_mut(), 0) };
    (status == 0 && size == std::mem::size_of::<u64>()).then_some(value)
}

/// Returns a string sysctl such as `kern.osproductversion`.
pub fn sysctl_string(name: &str) -> Option<String> {
    let name = CString::new(name).ok()?;
    let mut buffer = vec![0u8; 256];
    let mut size = buffer.len();
    // SAFETY: the buffer has room for `size` bytes, and the call writes no more and updates
    // `size`; no new value is set.
    let status = unsafe { libc::sysctlbyname(name.as_ptr(), buffer.as_mut_ptr().cast::<c_void>(), &mut size, std::ptr::null_mut(), 0) };
    if status != 0 {
        return None;
    }
    buffer.truncate(size);
    let text = CStr::from_bytes_until_nul(&buffer).ok()?;
    Some(text.to_string_lossy().into_owned())
}
