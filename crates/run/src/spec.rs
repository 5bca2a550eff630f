//! From an image config and `docker run`-style options to an OCI runtime config
//! (`config.json`), by docker's rules. Pure: no I/O.
//!
//! Two steps: [`plan`] applies the image-config rules (command, environment, working
//! directory, user, stop signal) and checks every option, before anything is mounted;
//! [`runtime_spec`] turns the plan and the resolved user into a [`Spec`].
//!
//! The runtime config is written here field by field rather than taken from `runc spec`
//! (never run at run time) or from `oci_spec`'s defaults, so that every setting is visible
//! and chosen: runc's default mounts, masked and read-only paths, namespaces and device
//! rule (deny all; the runtime adds the standard devices), docker's default capability set,
//! and docker's `no_new_privileges = false`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxDeviceCgroupBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxResourcesBuilder, Mount, MountBuilder,
    PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder, Spec, SpecBuilder,
    UserBuilder,
};
use serde::Deserialize;

use crate::user::ExecUser;
use crate::Error;

/// docker's `PATH` for images that set none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The fields of an OCI image config that decide how a container runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// `config.Entrypoint`.
    pub entrypoint: Option<Vec<String>>,
    /// `config.Cmd`.
    pub cmd: Option<Vec<String>>,
    /// `config.Env`, `KEY=VALUE` each.
    pub env: Vec<String>,
    /// `config.WorkingDir`.
    pub working_dir: Option<String>,
    /// `config.User`.
    pub user: Option<String>,
    /// `config.StopSignal`.
    pub stop_signal: Option<String>,
}

#[derive(Deserialize)]
struct ConfigDoc {
    #[serde(default)]
    config: Option<ConfigInner>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ConfigInner {
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    stop_signal: Option<String>,
}

impl ImageConfig {
    /// Reads the OCI image config document (the JSON whose `config` object holds `Cmd`,
    /// `Env`, ...). Unknown fields are ignored; a missing `config` is an empty one.
    pub fn from_json(json: &str) -> Result<ImageConfig, Error> {
        let doc: ConfigDoc = serde_json::from_str(json).map_err(|e| Error::ImageConfig {
            detail: e.to_string(),
        })?;
        let Some(c) = doc.config else {
            return Ok(ImageConfig::default());
        };
        let empty_is_none = |s: Option<String>| s.filter(|s| !s.is_empty());
        Ok(ImageConfig {
            entrypoint: c.entrypoint,
            cmd: c.cmd,
            env: c.env.unwrap_or_default(),
            working_dir: empty_is_none(c.working_dir),
            user: empty_is_none(c.user),
            stop_signal: empty_is_none(c.stop_signal),
        })
    }
}

/// The container's network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Network {
    /// A network namespace of its own with only a loopback interface (runc's default spec).
    #[default]
    None,
    /// The host's network namespace.
    Host,
}

impl std::str::FromStr for Network {
    type Err = Error;
    fn from_str(s: &str) -> Result<Network, Error> {
        match s {
            "none" => Ok(Network::None),
            "host" => Ok(Network::Host),
            _ => Err(Error::Option {
                option: "--network",
                value: s.to_string(),
                detail: "clip run knows `none` (the default: loopback only, in a network \
                         namespace of its own) and `host`",
            }),
        }
    }
}

/// A bind mount, `-v SRC:DST[:ro|rw]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// Absolute host path.
    pub source: PathBuf,
    /// Absolute path in the container.
    pub destination: String,
    /// Mounted read-only.
    pub read_only: bool,
}

impl std::str::FromStr for Volume {
    type Err = Error;
    /// Parses `SRC:DST[:OPTS]`, OPTS a comma-separated list of `ro` and `rw`. Checks the
    /// form only; whether SRC exists is checked when the container is set up.
    fn from_str(spec: &str) -> Result<Volume, Error> {
        let bad = |detail: &str| Error::Volume {
            spec: spec.to_string(),
            detail: detail.to_string(),
        };
        let parts: Vec<&str> = spec.split(':').collect();
        let (src, dst, opts) = match parts.as_slice() {
            [s, d] => (*s, *d, ""),
            [s, d, o] => (*s, *d, *o),
            _ => {
                return Err(bad(
                    "give SRC:DST or SRC:DST:ro (absolute paths, no `:` in them)",
                ))
            }
        };
        if !src.starts_with('/') {
            return Err(bad(
                "the source must be an absolute host path (clip run has no named volumes; \
                 for a relative path use \"$PWD/...\")",
            ));
        }
        if !dst.starts_with('/') {
            return Err(bad(
                "the destination must be an absolute path in the container",
            ));
        }
        if dst.split('/').all(|c| c.is_empty() || c == ".") {
            return Err(bad("the destination cannot be the container's root"));
        }
        let mut read_only = false;
        for opt in opts.split(',').filter(|o| !o.is_empty()) {
            match opt {
                "ro" => read_only = true,
                "rw" => read_only = false,
                _ => return Err(bad("unknown option; clip run knows `ro` and `rw`")),
            }
        }
        Ok(Volume {
            source: PathBuf::from(src),
            destination: dst.to_string(),
            read_only,
        })
    }
}

/// What the user asked for, in `docker run` terms.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// `COMMAND [ARG...]` after the image: replaces the image's Cmd.
    pub command: Vec<String>,
    /// `--entrypoint`: replaces the image's Entrypoint (`""` clears it) and clears its Cmd.
    pub entrypoint: Option<String>,
    /// `-e` and `--env-file` settings, `KEY=VALUE` each, applied in order over the image's.
    pub env: Vec<String>,
    /// `-w`: the working directory.
    pub workdir: Option<String>,
    /// `-u USER[:GROUP]`.
    pub user: Option<String>,
    /// `-t`: a terminal.
    pub terminal: bool,
    /// `--read-only`: the root filesystem is mounted read-only.
    pub read_only: bool,
    /// `--network`.
    pub network: Network,
    /// `--hostname`.
    pub hostname: Option<String>,
    /// `-v`.
    pub volumes: Vec<Volume>,
}

/// The container's process as the image config and the options decide it, before the user
/// is resolved against the image's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The command line: Entrypoint followed by Cmd, after the options' rules.
    pub args: Vec<String>,
    /// The environment, `KEY=VALUE`, without `HOME` (which depends on the user).
    pub env: Vec<String>,
    /// The working directory (absolute).
    pub cwd: String,
    /// `USER[:GROUP]` to resolve (empty: root).
    pub user: String,
    /// The hostname.
    pub hostname: String,
    /// The signal that asks the container to stop (the image's StopSignal, else SIGTERM).
    pub stop_signal: i32,
}

/// Applies docker's rules:
///
/// - **Command**: Entrypoint followed by Cmd. A COMMAND replaces Cmd; `--entrypoint X`
///   replaces Entrypoint with `[X]` (`""`: none) and clears Cmd unless a COMMAND is given.
///   Nothing left to run is an error.
/// - **Environment**: `PATH` (docker's default), `HOSTNAME`, `TERM=xterm` with a terminal,
///   then the image's Env, then the options' `-e`/`--env-file`, each replacing an earlier
///   setting of the same name in place. `HOME` comes from the user (see [`runtime_spec`]).
/// - **Working directory**: `-w`, else the image's WorkingDir, else `/`; must be absolute.
/// - **User**: `-u`, else the image's User, else root.
/// - **Stop signal**: the image's StopSignal, else SIGTERM.
///
/// `default_hostname` is used without `--hostname` (docker uses the container id's start).
pub fn plan(
    image: &ImageConfig,
    options: &RunOptions,
    default_hostname: &str,
) -> Result<Plan, Error> {
    let entrypoint: Vec<String> = match &options.entrypoint {
        Some(e) if e.is_empty() => Vec::new(),
        Some(e) => vec![e.clone()],
        None => image.entrypoint.clone().unwrap_or_default(),
    };
    let cmd: Vec<String> = if !options.command.is_empty() {
        options.command.clone()
    } else if options.entrypoint.is_some() {
        Vec::new()
    } else {
        image.cmd.clone().unwrap_or_default()
    };
    let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if args.is_empty() {
        return Err(Error::NoCommand);
    }

    let hostname = match &options.hostname {
        Some(h) => {
            check_hostname(h)?;
            h.clone()
        }
        None => default_hostname.to_string(),
    };

    let mut env = Env::default();
    env.set(format!("PATH={DEFAULT_PATH}"));
    env.set(format!("HOSTNAME={hostname}"));
    if options.terminal {
        env.set("TERM=xterm".to_string());
    }
    for e in &image.env {
        check_env(e, "")?;
        env.set(e.clone());
    }
    for e in &options.env {
        check_env(e, "")?;
        env.set(e.clone());
    }

    let (cwd, source_of_it) = match (&options.workdir, &image.working_dir) {
        (Some(w), _) => (w.clone(), "-w"),
        (None, Some(w)) => (w.clone(), "the image's WorkingDir"),
        (None, None) => ("/".to_string(), ""),
    };
    if !cwd.starts_with('/') {
        return Err(Error::RelativeWorkdir {
            dir: cwd,
            source_of_it,
        });
    }

    let stop_signal = match &image.stop_signal {
        Some(s) => parse_signal(s).ok_or_else(|| Error::Signal {
            signal: s.clone(),
            source_of_it: "the image's StopSignal",
        })?,
        None => libc::SIGTERM,
    };

    Ok(Plan {
        args,
        env: env.into_vec(),
        cwd,
        user: options
            .user
            .clone()
            .or_else(|| image.user.clone())
            .unwrap_or_default(),
        hostname,
        stop_signal,
    })
}

/// An ordered environment where a later setting of a name replaces the earlier in place.
#[derive(Default)]
struct Env {
    entries: Vec<String>,
    index: BTreeMap<String, usize>,
}

impl Env {
    fn set(&mut self, entry: String) {
        let key = entry.split_once('=').map_or(entry.as_str(), |(k, _)| k);
        match self.index.get(key) {
            Some(&i) => self.entries[i] = entry,
            None => {
                self.index.insert(key.to_string(), self.entries.len());
                self.entries.push(entry);
            }
        }
    }
    fn has(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }
    fn into_vec(self) -> Vec<String> {
        self.entries
    }
}

fn check_env(entry: &str, at: &str) -> Result<(), Error> {
    let bad = |detail| Error::Env {
        entry: entry.to_string(),
        at: at.to_string(),
        detail,
    };
    let Some((key, _)) = entry.split_once('=') else {
        return Err(bad("not of the form KEY=VALUE"));
    };
    if key.is_empty() {
        return Err(bad("the name is empty"));
    }
    if key.contains(char::is_whitespace) {
        return Err(bad("the name contains whitespace"));
    }
    if entry.contains('\0') {
        return Err(bad("contains a NUL byte"));
    }
    Ok(())
}

/// One `-e` argument as docker reads it: `KEY=VALUE` as given; `KEY` alone takes the value
/// `lookup(KEY)` gives (clip's own environment), and is left out when that has none.
pub fn env_arg(
    arg: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Option<String>, Error> {
    env_entry(arg, "", &lookup)
}

fn env_entry(
    arg: &str,
    at: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<String>, Error> {
    if arg.contains('=') {
        check_env(arg, at)?;
        return Ok(Some(arg.to_string()));
    }
    check_env(&format!("{arg}="), at)?;
    Ok(lookup(arg).map(|v| format!("{arg}={v}")))
}

/// The settings of an `--env-file` as docker reads one: a `KEY=VALUE` or `KEY` per line
/// (as for `-e`), leading whitespace dropped, blank lines and lines starting with `#`
/// skipped, values taken verbatim (no quotes removed). `name` is used in errors.
pub fn parse_env_file(
    text: &str,
    name: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Vec<String>, Error> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = format!(" in {name} line {}", n + 1);
        if let Some(e) = env_entry(line, &at, &lookup)? {
            out.push(e);
        }
    }
    Ok(out)
}

fn check_hostname(h: &str) -> Result<(), Error> {
    let ok = !h.is_empty()
        && h.len() <= 64
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !h.starts_with(['-', '.']);
    if ok {
        Ok(())
    } else {
        Err(Error::Option {
            option: "--hostname",
            value: h.to_string(),
            detail:
                "a hostname is 1 to 64 letters, digits, `-` and `.`, not starting with `-` or `.`",
        })
    }
}

/// Checks a container name as docker does (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`, and at most 128
/// characters here, which every runtime accepts).
pub fn check_name(name: &str) -> Result<(), Error> {
    let ok = name.len() <= 128
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::Option {
            option: "--name",
            value: name.to_string(),
            detail: "a name is letters, digits, `_`, `.` and `-`, starting with a letter or \
                     digit, at most 128 characters",
        })
    }
}

/// A signal by name (`SIGTERM`, `TERM`, `sigterm`, `SIGRTMIN+3`) or number (`15`), as
/// docker reads StopSignal; `None` for anything else.
pub fn parse_signal(s: &str) -> Option<i32> {
    const NAMES: &[(&str, i32)] = &[
        ("HUP", libc::SIGHUP),
        ("INT", libc::SIGINT),
        ("QUIT", libc::SIGQUIT),
        ("ILL", libc::SIGILL),
        ("TRAP", libc::SIGTRAP),
        ("ABRT", libc::SIGABRT),
        ("IOT", libc::SIGIOT),
        ("BUS", libc::SIGBUS),
        ("FPE", libc::SIGFPE),
        ("KILL", libc::SIGKILL),
        ("USR1", libc::SIGUSR1),
        ("SEGV", libc::SIGSEGV),
        ("USR2", libc::SIGUSR2),
        ("PIPE", libc::SIGPIPE),
        ("ALRM", libc::SIGALRM),
        ("TERM", libc::SIGTERM),
        ("STKFLT", libc::SIGSTKFLT),
        ("CHLD", libc::SIGCHLD),
        ("CONT", libc::SIGCONT),
        ("STOP", libc::SIGSTOP),
        ("TSTP", libc::SIGTSTP),
        ("TTIN", libc::SIGTTIN),
        ("TTOU", libc::SIGTTOU),
        ("URG", libc::SIGURG),
        ("XCPU", libc::SIGXCPU),
        ("XFSZ", libc::SIGXFSZ),
        ("VTALRM", libc::SIGVTALRM),
        ("PROF", libc::SIGPROF),
        ("WINCH", libc::SIGWINCH),
        ("IO", libc::SIGIO),
        ("POLL", libc::SIGPOLL),
        ("PWR", libc::SIGPWR),
        ("SYS", libc::SIGSYS),
    ];
    // The real-time range as the C library leaves it to programs (glibc keeps 32 and 33).
    const RTMIN: i32 = 34;
    const RTMAX: i32 = 64;
    if let Ok(n) = s.parse::<i32>() {
        return (1..=RTMAX).contains(&n).then_some(n);
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Some(&(_, n)) = NAMES.iter().find(|(k, _)| *k == name) {
        return Some(n);
    }
    let rt = |base: i32, rest: &str, sign: i32| -> Option<i32> {
        let n = if rest.is_empty() {
            base
        } else {
            let off: i32 = rest
                .strip_prefix(if sign > 0 { '+' } else { '-' })?
                .parse()
                .ok()?;
            base + sign * off
        };
        (RTMIN..=RTMAX).contains(&n).then_some(n)
    };
    if let Some(rest) = name.strip_prefix("RTMIN") {
        return rt(RTMIN, rest, 1);
    }
    if let Some(rest) = name.strip_prefix("RTMAX") {
        return rt(RTMAX, rest, -1);
    }
    None
}

/// docker's default capability set (moby `caps.DefaultCapabilities`).
pub const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// runc's default masked paths (`runc spec`).
const MASKED_PATHS: [&str; 10] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
];

/// runc's default read-only paths (`runc spec`).
const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

fn mount(destination: &str, typ: &str, source: &str, options: &[&str]) -> Mount {
    MountBuilder::default()
        .destination(destination)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
        .unwrap_or_default()
}

/// runc's default mounts (`runc spec`): `/proc`, `/dev` (tmpfs), `/dev/pts`, `/dev/shm`,
/// `/dev/mqueue`, `/sys` (read-only) and `/sys/fs/cgroup` (read-only).
fn default_mounts() -> Vec<Mount> {
    vec![
        mount("/proc", "proc", "proc", &[]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        ),
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        ),
    ]
}

/// Where the bundle's root filesystem is, relative to the bundle (`root.path`).
pub const ROOTFS: &str = "rootfs";

/// The OCI runtime config of a container: the plan, run as `user`, with the options'
/// terminal, read-only root, network and bind mounts.
///
/// - `HOME` is set from `user` when the environment has none.
/// - Capabilities: docker's default set; for a non-root uid only the bounding set, as
///   docker does (what `execve` would give such a process).
/// - Namespaces: pid, ipc, uts, mount, cgroup, and network unless `--network host`; with
///   `--network host` the host's `/etc/hosts` and `/etc/resolv.conf` are bound read-only,
///   as docker does.
/// - One limit, runc's default: 1024 open files.
pub fn runtime_spec(plan: &Plan, user: &ExecUser, options: &RunOptions) -> Result<Spec, Error> {
    let build = |part: &'static str, e: oci_spec::OciSpecError| Error::BuildSpec {
        part,
        detail: e.to_string(),
    };
    let mut env = Env::default();
    for e in &plan.env {
        env.set(e.clone());
    }
    if !env.has("HOME") {
        env.set(format!("HOME={}", user.home));
    }
    let caps: oci_spec::runtime::Capabilities = DEFAULT_CAPABILITIES.into_iter().collect();
    let mut capabilities = LinuxCapabilitiesBuilder::default().bounding(caps.clone());
    if user.uid == 0 {
        capabilities = capabilities.effective(caps.clone()).permitted(caps);
    } else {
        capabilities = capabilities
            .effective(oci_spec::runtime::Capabilities::new())
            .permitted(oci_spec::runtime::Capabilities::new());
    }
    let capabilities = capabilities
        .inheritable(oci_spec::runtime::Capabilities::new())
        .ambient(oci_spec::runtime::Capabilities::new())
        .build()
        .map_err(|e| build("capabilities", e))?;
    let process = ProcessBuilder::default()
        .terminal(options.terminal)
        .user(
            UserBuilder::default()
                .uid(user.uid)
                .gid(user.gid)
                .additional_gids(user.additional_gids.clone())
                .build()
                .map_err(|e| build("user", e))?,
        )
        .args(plan.args.clone())
        .env(env.into_vec())
        .cwd(&plan.cwd)
        .capabilities(capabilities)
        .rlimits(vec![PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .hard(1024u64)
            .soft(1024u64)
            .build()
            .map_err(|e| build("rlimits", e))?])
        .no_new_privileges(false)
        .build()
        .map_err(|e| build("process", e))?;

    let mut namespaces = vec![
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Cgroup,
    ];
    if options.network == Network::None {
        namespaces.insert(1, LinuxNamespaceType::Network);
    }
    let namespaces = namespaces
        .into_iter()
        .map(|typ| LinuxNamespaceBuilder::default().typ(typ).build())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| build("namespaces", e))?;
    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .masked_paths(MASKED_PATHS.map(String::from).to_vec())
        .readonly_paths(READONLY_PATHS.map(String::from).to_vec())
        .resources(
            LinuxResourcesBuilder::default()
                .devices(vec![LinuxDeviceCgroupBuilder::default()
                    .allow(false)
                    .access("rwm")
                    .build()
                    .map_err(|e| build("devices", e))?])
                .build()
                .map_err(|e| build("resources", e))?,
        )
        .build()
        .map_err(|e| build("linux", e))?;

    let mut mounts = default_mounts();
    if options.network == Network::Host {
        for file in ["/etc/hosts", "/etc/resolv.conf"] {
            mounts.push(mount(file, "bind", file, &["rbind", "ro", "rprivate"]));
        }
    }
    for v in &options.volumes {
        let source = v.source.to_string_lossy();
        let mut opts = vec!["rbind", "rprivate"];
        if v.read_only {
            opts.push("ro");
        }
        mounts.push(mount(&v.destination, "bind", &source, &opts));
    }

    SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path(ROOTFS)
                .readonly(options.read_only)
                .build()
                .map_err(|e| build("root", e))?,
        )
        .hostname(&plan.hostname)
        .process(process)
        .mounts(mounts)
        .linux(linux)
        .build()
        .map_err(|e| build("spec", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> ImageConfig {
        ImageConfig::from_json(
            r#"{"architecture":"amd64","os":"linux","config":{
                "Entrypoint":["/entry.sh"],"Cmd":["serve","--port","80"],
                "Env":["PATH=/app/bin:/bin","LANG=C.UTF-8","HOSTNAME=image"],
                "WorkingDir":"/app","User":"app","StopSignal":"SIGQUIT"},
                "rootfs":{"type":"layers","diff_ids":[]}}"#,
        )
        .unwrap()
    }

    fn root() -> ExecUser {
        ExecUser {
            uid: 0,
            gid: 0,
            additional_gids: vec![],
            home: "/root".into(),
        }
    }

    fn args(image: &ImageConfig, options: &RunOptions) -> Result<Vec<String>, Error> {
        plan(image, options, "h").map(|p| p.args)
    }

    #[test]
    fn reads_the_image_config() {
        let c = image();
        assert_eq!(
            c.entrypoint.as_deref(),
            Some(&["/entry.sh".to_string()][..])
        );
        assert_eq!(c.user.as_deref(), Some("app"));
        assert_eq!(c.stop_signal.as_deref(), Some("SIGQUIT"));
        // Nulls, empty strings and a missing config are all "not set".
        let c = ImageConfig::from_json(
            r#"{"config":{"Cmd":null,"Entrypoint":null,"Env":null,"WorkingDir":"","User":""}}"#,
        )
        .unwrap();
        assert_eq!(c, ImageConfig::default());
        assert_eq!(
            ImageConfig::from_json(r#"{"os":"linux"}"#).unwrap(),
            ImageConfig::default()
        );
        let e = ImageConfig::from_json(r#"{"config":{"Cmd":"sh"}}"#).unwrap_err();
        assert!(matches!(e, Error::ImageConfig { .. }), "{e}");
        assert!(ImageConfig::from_json("not json").is_err());
    }

    #[test]
    fn entrypoint_and_cmd_rules() {
        let img = image();
        let o = RunOptions::default();
        assert_eq!(
            args(&img, &o).unwrap(),
            ["/entry.sh", "serve", "--port", "80"]
        );
        // A command replaces Cmd.
        let o = RunOptions {
            command: vec!["debug".into()],
            ..RunOptions::default()
        };
        assert_eq!(args(&img, &o).unwrap(), ["/entry.sh", "debug"]);
        // --entrypoint replaces Entrypoint and clears Cmd...
        let o = RunOptions {
            entrypoint: Some("/bin/sh".into()),
            ..RunOptions::default()
        };
        assert_eq!(args(&img, &o).unwrap(), ["/bin/sh"]);
        // ...unless a command is given.
        let o = RunOptions {
            entrypoint: Some("/bin/sh".into()),
            command: vec!["-c".into(), "echo hi".into()],
            ..RunOptions::default()
        };
        assert_eq!(args(&img, &o).unwrap(), ["/bin/sh", "-c", "echo hi"]);
        // --entrypoint "" clears it: the command runs alone.
        let o = RunOptions {
            entrypoint: Some(String::new()),
            command: vec!["ls".into()],
            ..RunOptions::default()
        };
        assert_eq!(args(&img, &o).unwrap(), ["ls"]);
        // ...and with nothing else, there is nothing to run.
        let o = RunOptions {
            entrypoint: Some(String::new()),
            ..RunOptions::default()
        };
        assert!(matches!(args(&img, &o), Err(Error::NoCommand)));
        // An image with only Cmd; an image with nothing.
        let cmd_only = ImageConfig {
            cmd: Some(vec!["sh".into()]),
            ..ImageConfig::default()
        };
        assert_eq!(args(&cmd_only, &RunOptions::default()).unwrap(), ["sh"]);
        let e = args(&ImageConfig::default(), &RunOptions::default()).unwrap_err();
        assert!(e.to_string().contains("no command to run"), "{e}");
    }

    #[test]
    fn environment_rules() {
        let img = image();
        let o = RunOptions {
            env: vec!["LANG=fr_FR".into(), "EXTRA=1".into(), "EMPTY=".into()],
            terminal: true,
            ..RunOptions::default()
        };
        let p = plan(&img, &o, "abc123").unwrap();
        assert_eq!(
            p.env,
            [
                "PATH=/app/bin:/bin",
                // The image may set HOSTNAME; docker lets it.
                "HOSTNAME=image",
                "TERM=xterm",
                "LANG=fr_FR",
                "EXTRA=1",
                "EMPTY="
            ]
        );
        // No PATH in the image: docker's default; HOSTNAME is the hostname.
        let bare = ImageConfig {
            cmd: Some(vec!["sh".into()]),
            ..ImageConfig::default()
        };
        let p = plan(&bare, &RunOptions::default(), "abc123").unwrap();
        assert_eq!(
            p.env,
            [format!("PATH={DEFAULT_PATH}"), "HOSTNAME=abc123".into()]
        );
        let o = RunOptions {
            hostname: Some("web".into()),
            ..RunOptions::default()
        };
        assert_eq!(plan(&bare, &o, "x").unwrap().env[1], "HOSTNAME=web");
        // HOME from the user unless set.
        let s = runtime_spec(&p, &root(), &RunOptions::default()).unwrap();
        let env = s.process().as_ref().unwrap().env().clone().unwrap();
        assert_eq!(env.last().unwrap(), "HOME=/root");
        let mut p2 = p.clone();
        p2.env.push("HOME=/elsewhere".into());
        let s = runtime_spec(&p2, &root(), &RunOptions::default()).unwrap();
        let env = s.process().as_ref().unwrap().env().clone().unwrap();
        assert_eq!(env.iter().filter(|e| e.starts_with("HOME=")).count(), 1);
        assert!(env.contains(&"HOME=/elsewhere".to_string()));
        // Malformed settings are refused with the entry named.
        let o = RunOptions {
            env: vec!["BAD KEY=1".into()],
            ..RunOptions::default()
        };
        let e = plan(&bare, &o, "h").unwrap_err().to_string();
        assert!(e.contains("BAD KEY=1") && e.contains("whitespace"), "{e}");
    }

    #[test]
    fn env_args_and_files_as_docker_reads_them() {
        let lookup = |k: &str| (k == "FROM_HOST").then(|| "hostval".to_string());
        assert_eq!(env_arg("A=b=c", lookup).unwrap().as_deref(), Some("A=b=c"));
        assert_eq!(
            env_arg("FROM_HOST", lookup).unwrap().as_deref(),
            Some("FROM_HOST=hostval")
        );
        assert_eq!(env_arg("UNSET_HERE", lookup).unwrap(), None);
        assert!(env_arg("=x", lookup).is_err());
        let file = "# comment\n\n  SPACED=  kept  \nQUOTED=\"q\"\nFROM_HOST\nUNSET_HERE\n";
        assert_eq!(
            parse_env_file(file, "f.env", lookup).unwrap(),
            ["SPACED=  kept  ", "QUOTED=\"q\"", "FROM_HOST=hostval"]
        );
        let e = parse_env_file("OK=1\nNOT OK=2\n", "f.env", lookup)
            .unwrap_err()
            .to_string();
        assert!(e.contains("in f.env line 2"), "{e}");
    }

    #[test]
    fn workdir_user_and_stop_signal() {
        let img = image();
        let p = plan(&img, &RunOptions::default(), "h").unwrap();
        assert_eq!((p.cwd.as_str(), p.user.as_str()), ("/app", "app"));
        assert_eq!(p.stop_signal, libc::SIGQUIT);
        let o = RunOptions {
            workdir: Some("/tmp".into()),
            user: Some("1000:1000".into()),
            ..RunOptions::default()
        };
        let p = plan(&img, &o, "h").unwrap();
        assert_eq!((p.cwd.as_str(), p.user.as_str()), ("/tmp", "1000:1000"));
        let bare = ImageConfig {
            cmd: Some(vec!["sh".into()]),
            ..ImageConfig::default()
        };
        let p = plan(&bare, &RunOptions::default(), "h").unwrap();
        assert_eq!((p.cwd.as_str(), p.user.as_str()), ("/", ""));
        assert_eq!(p.stop_signal, libc::SIGTERM);
        let o = RunOptions {
            workdir: Some("rel".into()),
            ..RunOptions::default()
        };
        let e = plan(&bare, &o, "h").unwrap_err().to_string();
        assert!(e.contains("\"rel\" (-w) is not an absolute path"), "{e}");
        let bad_signal = ImageConfig {
            stop_signal: Some("SIGNOPE".into()),
            ..bare.clone()
        };
        let e = plan(&bad_signal, &RunOptions::default(), "h").unwrap_err();
        assert!(e.to_string().contains("StopSignal"), "{e}");
    }

    #[test]
    fn signals_by_name_and_number() {
        assert_eq!(parse_signal("SIGTERM"), Some(15));
        assert_eq!(parse_signal("term"), Some(15));
        assert_eq!(parse_signal("KILL"), Some(9));
        assert_eq!(parse_signal("9"), Some(9));
        assert_eq!(parse_signal("SIGRTMIN+3"), Some(37));
        assert_eq!(parse_signal("RTMAX-1"), Some(63));
        assert_eq!(parse_signal("0"), None);
        assert_eq!(parse_signal("65"), None);
        assert_eq!(parse_signal("SIGRTMIN+40"), None);
        assert_eq!(parse_signal(""), None);
    }

    #[test]
    fn volumes_names_hostnames_networks() {
        let v: Volume = "/srv/data:/data:ro".parse().unwrap();
        assert_eq!(
            v,
            Volume {
                source: "/srv/data".into(),
                destination: "/data".into(),
                read_only: true
            }
        );
        assert!(!"/a:/b".parse::<Volume>().unwrap().read_only);
        assert!(!"/a:/b:ro,rw".parse::<Volume>().unwrap().read_only);
        for (bad, why) in [
            ("data:/data", "absolute host path"),
            ("/a:b", "destination must be an absolute"),
            ("/a:/", "root"),
            ("/a:/b:z", "unknown option"),
            ("/a", "SRC:DST"),
            ("/a:/b:ro:x", "SRC:DST"),
        ] {
            let e = bad.parse::<Volume>().unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert!(check_name("web-1.a_b").is_ok());
        assert!(check_name("-x").is_err());
        assert!(check_name("a/b").is_err());
        assert!(check_name("").is_err());
        let o = RunOptions {
            hostname: Some("bad host".into()),
            command: vec!["sh".into()],
            ..RunOptions::default()
        };
        assert!(plan(&ImageConfig::default(), &o, "h").is_err());
        assert_eq!("host".parse::<Network>().unwrap(), Network::Host);
        assert!("bridge".parse::<Network>().is_err());
    }

    fn spec_json(options: &RunOptions, user: &ExecUser) -> serde_json::Value {
        let img = image();
        let p = plan(&img, options, "h").unwrap();
        serde_json::to_value(runtime_spec(&p, user, options).unwrap()).unwrap()
    }

    #[test]
    fn runtime_config_defaults() {
        let s = spec_json(&RunOptions::default(), &root());
        assert_eq!(s["root"]["path"], "rootfs");
        assert_eq!(s["root"]["readonly"], false);
        assert_eq!(s["hostname"], "h");
        assert_eq!(s["process"]["terminal"], false);
        assert_eq!(s["process"]["cwd"], "/app");
        assert_eq!(s["process"]["user"]["uid"], 0);
        assert_eq!(s["process"]["noNewPrivileges"], false);
        let caps = &s["process"]["capabilities"];
        assert_eq!(caps["bounding"].as_array().unwrap().len(), 14);
        assert_eq!(caps["effective"], caps["bounding"]);
        assert!(caps["bounding"]
            .as_array()
            .unwrap()
            .contains(&"CAP_NET_BIND_SERVICE".into()));
        assert_eq!(caps["inheritable"].as_array().unwrap().len(), 0);
        let dests: Vec<&str> = s["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        assert_eq!(
            dests,
            [
                "/proc",
                "/dev",
                "/dev/pts",
                "/dev/shm",
                "/dev/mqueue",
                "/sys",
                "/sys/fs/cgroup"
            ]
        );
        let sys = &s["mounts"][5]["options"];
        assert!(sys.as_array().unwrap().contains(&"ro".into()));
        let ns: Vec<&str> = s["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(ns, ["pid", "network", "ipc", "uts", "mount", "cgroup"]);
        assert_eq!(s["linux"]["maskedPaths"].as_array().unwrap().len(), 10);
        assert_eq!(s["linux"]["readonlyPaths"][3], "/proc/sys");
        assert_eq!(
            s["linux"]["resources"]["devices"],
            serde_json::json!([{"allow": false, "access": "rwm"}])
        );
    }

    #[test]
    fn runtime_config_options() {
        let user = ExecUser {
            uid: 1000,
            gid: 1000,
            additional_gids: vec![29, 44],
            home: "/home/app".into(),
        };
        let o = RunOptions {
            terminal: true,
            read_only: true,
            network: Network::Host,
            volumes: vec![
                "/srv:/data:ro".parse().unwrap(),
                "/tmp/x:/x".parse().unwrap(),
            ],
            ..RunOptions::default()
        };
        let s = spec_json(&o, &user);
        assert_eq!(s["root"]["readonly"], true);
        assert_eq!(s["process"]["terminal"], true);
        assert_eq!(
            s["process"]["user"],
            serde_json::json!({"uid": 1000, "gid": 1000, "additionalGids": [29, 44]})
        );
        // A non-root user gets the bounding set only, as docker does.
        let caps = &s["process"]["capabilities"];
        assert_eq!(caps["bounding"].as_array().unwrap().len(), 14);
        assert_eq!(caps["effective"].as_array().unwrap().len(), 0);
        assert_eq!(caps["permitted"].as_array().unwrap().len(), 0);
        let ns = s["linux"]["namespaces"].as_array().unwrap();
        assert!(!ns.iter().any(|n| n["type"] == "network"));
        let mounts = s["mounts"].as_array().unwrap();
        let find = |d: &str| mounts.iter().find(|m| m["destination"] == d).unwrap();
        assert_eq!(find("/etc/resolv.conf")["source"], "/etc/resolv.conf");
        assert_eq!(
            find("/data")["options"],
            serde_json::json!(["rbind", "rprivate", "ro"])
        );
        assert_eq!(
            find("/x")["options"],
            serde_json::json!(["rbind", "rprivate"])
        );
        assert_eq!(find("/x")["type"], "bind");
        let env = s["process"]["env"].as_array().unwrap();
        assert!(env.contains(&"TERM=xterm".into()));
        assert!(env.contains(&"HOME=/home/app".into()));
    }
}
