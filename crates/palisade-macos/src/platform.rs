//! The allowances every command on macOS needs, whatever the policy: the system's own directories, the
//! devices, the sysctls, the Mach services and the IPC that ordinary build tools use. Each
//! list names its entries one by one, so that a service or a sysctl the list does not name
//! stays denied. Which tool needs which entry is noted where it is not obvious.

/// Directories of the system that every command reads and may execute from. Spellings are
/// canonical: `/private/etc`, not `/etc`. `/System/Volumes/Data` is left out on purpose,
/// because it is a second spelling of every user's home directory.
pub const SYSTEM_READ: &[&str] = &[
    "/System/Library",
    // The dyld shared cache lives in the OS cryptex since macOS 13.
    "/System/Cryptexes",
    "/System/Volumes/Preboot/Cryptexes",
    "/usr",
    "/bin",
    "/sbin",
    "/private/etc",
    // /bin/sh reads the link /private/var/select/sh to pick the shell it runs.
    "/private/var/select",
    "/private/var/db/timezone",
    // xcode-select's choice of developer directory.
    "/private/var/db/xcode_select_link",
    "/Library/Developer",
    "/Library/Frameworks",
    "/Library/Java",
    "/Applications/Xcode.app",
    "/opt/homebrew",
    "/opt/local",
];

/// The root's symbolic links into `/private`. Programs that call `realpath` read each link
/// itself, so the links are readable; what they point to is granted in its own spelling.
pub const ROOT_LINKS: &[&str] = &["/etc", "/tmp", "/var"];

/// Devices read and written by shells and runtimes. `/dev/dtracehelper` is opened by dyld at
/// every start and only logs a denial when refused.
pub const DEVICES_READ_WRITE: &[&str] = &["/dev/null", "/dev/zero", "/dev/tty", "/dev/ptmx", "/dev/dtracehelper"];

/// Devices only read.
pub const DEVICES_READ: &[&str] = &["/dev/random", "/dev/urandom"];

/// Pseudo-terminals, `/dev/ttys000` and so on: a command opens the one `openpty` gave it, and
/// `isatty` on an inherited terminal is an ioctl on it.
pub const TERMINAL_REGEX: &str = "^/dev/ttys[0-9]+$";

/// Sysctls read by name. Left out on purpose: `kern.procargs2` and `kern.procargs`, which return
/// the arguments and environment of other processes.
pub const SYSCTL_READ: &[&str] = &[
    // Node's os.cpus() returns an empty list without the brand string and the model, which
    // breaks the parallelism of yarn, npm and node-gyp.
    "machdep.cpu.brand_string",
    "hw.model",
    // numpy reads the physical CPU count when it is imported.
    "hw.physicalcpu",
    "hw.physicalcpu_max",
    // Flutter and others tell Apple silicon from Intel by this name.
    "hw.optional.arm64",
    "hw.activecpu",
    "hw.byteorder",
    "hw.cachelinesize",
    "hw.cpufamily",
    "hw.cpufrequency",
    "hw.cpusubtype",
    "hw.cputype",
    "hw.l1dcachesize",
    "hw.l1icachesize",
    "hw.l2cachesize",
    "hw.l3cachesize",
    "hw.logicalcpu",
    "hw.logicalcpu_max",
    "hw.machine",
    "hw.memsize",
    "hw.ncpu",
    "hw.nperflevels",
    "hw.pagesize",
    "hw.tbfrequency",
    "kern.argmax",
    "kern.boottime",
    "kern.hostname",
    "kern.maxfiles",
    "kern.maxfilesperproc",
    "kern.maxproc",
    "kern.osproductversion",
    "kern.osrelease",
    "kern.ostype",
    "kern.osvariant_status",
    "kern.osversion",
    "kern.secure_kernel",
    "kern.usrstack64",
    "kern.version",
    // `ps` and `top` list processes through these; the names and ids of the host's processes
    // are visible, their arguments and environment are not.
    "kern.proc.all",
    "machdep.ptrauth_enabled",
    // Rosetta: rustup, node and others ask whether they run translated.
    "sysctl.proc_cputype",
    "sysctl.proc_native",
    "sysctl.proc_translated",
    "vm.loadavg",
    "vm.swapusage",
];

/// Sysctl name prefixes read: CPU feature flags for SIMD dispatch, the performance levels of
/// Apple silicon, the CPU description, and the record of one process or process group.
pub const SYSCTL_READ_PREFIXES: &[&str] = &["hw.optional.", "hw.perflevel", "machdep.cpu.", "kern.proc.pid.", "kern.proc.pgrp."];

/// Sysctls a runtime "writes" to query something: the JVM reads its CPU type this way.
pub const SYSCTL_WRITE: &[&str] = &["kern.grade_cputype"];

/// The sysctls that expose other processes' arguments and environment, denied again at the
/// end of every profile.
pub const SYSCTL_DENIED: &[&str] = &["kern.procargs2", "kern.procargs"];

/// Mach services every command may look up. A blanket `mach-lookup` would also reach the
/// keychain's services (`com.apple.SecurityServer`, `com.apple.secd`), which no list here
/// names.
pub const MACH_SERVICES: &[&str] = &[
    // getpwuid and group membership; without them `id`, `whoami` and git's author lookup fail.
    "com.apple.system.opendirectoryd.libinfo",
    "com.apple.system.opendirectoryd.membership",
    // Reading preferences, for Foundation-based tools.
    "com.apple.cfprefsd.agent",
    "com.apple.cfprefsd.daemon",
    // Per-user temporary and cache directories (confstr, NSTemporaryDirectory).
    "com.apple.bsd.dirhelper",
    "com.apple.logd",
    "com.apple.system.logger",
    "com.apple.system.notification_center",
    "com.apple.PowerManagement.control",
    // `ps`, `pgrep` and `top` call sysmond. Public profiles spell the service one way and a
    // report about `ps` the other, so both are listed until a Mac settles it.
    "com.apple.sysmond",
    "com.apple.sysmond.system",
];

/// Mach services for name resolution and certificate checks, allowed only with the host's
/// network. trustd also fetches certificates and revocation lists itself, from addresses a
/// certificate names, which would bypass palisade's proxy.
pub const MACH_SERVICES_NETWORK: &[&str] = &[
    "com.apple.SystemConfiguration.DNSConfiguration",
    "com.apple.SystemConfiguration.configd",
    "com.apple.dnssd.service",
    "com.apple.trustd.agent",
];

/// The socket of macOS's resolver. Connecting to it resolves any name, which would carry data
/// out in DNS queries, so only the host's network gets it.
pub const RESOLVER_SOCKET: &str = "/private/var/run/mDNSResponder";

/// The resolver configuration `/etc/resolv.conf` points to, read with the host's network.
pub const RESOLVER_CONFIGURATION: &str = "/private/var/run/resolv.conf";

/// POSIX shared memory names: the preferences cache, read only, and the registration object
/// that libomp (PyTorch, scikit-learn) creates.
pub const SHARED_MEMORY_READ_PREFIXES: &[&str] = &["apple.cfprefs."];
pub const SHARED_MEMORY_PREFIXES: &[&str] = &["/__KMP_REGISTERED_LIB_"];
