//! The privileged tier: real FUSE mounts of small in-memory images, checked through ordinary
//! system calls. Needs root and /dev/fuse (the development machines and CI have both); every
//! test unmounts what it mounted, also when it fails.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, UNIX_EPOCH};

use clip_archive::{FileType, Inode};
use clip_fs::testing::{Gate, ImageBuilder, MemoryContent};
use clip_fs::{ContentError, ContentSource, FsCore};
use clip_fuse::{is_mountpoint, mount, unmount, MountError, MountOptions, Mounted};
use rustix::fs::StatVfsMountFlags;
use tempfile::TempDir;

/// How long a test waits for something that should take milliseconds before failing.
const PATIENCE: Duration = Duration::from_secs(60);

/// A mounted image; unmounts (after opening its gate, if any) when dropped.
struct TestMount {
    mounted: Option<Mounted>,
    gate: Option<Arc<Gate>>,
    content: Arc<MemoryContent>,
    dir: TempDir,
}

impl TestMount {
    fn new(image: ImageBuilder, options: &MountOptions, gate_layer: Option<u32>) -> TestMount {
        TestMount::with(
            image,
            options,
            |content| gate_layer.map(|layer| content.gate(layer)),
            |content| content,
        )
    }

    /// A mount whose content source `prepare` sets up (gates, cached ranges; it returns the
    /// gate to open on drop) and `wrap` wraps.
    fn with(
        image: ImageBuilder,
        options: &MountOptions,
        prepare: impl FnOnce(&mut MemoryContent) -> Option<Arc<Gate>>,
        wrap: impl FnOnce(Arc<MemoryContent>) -> Arc<dyn ContentSource>,
    ) -> TestMount {
        assert!(
            rustix::process::geteuid().is_root(),
            "the FUSE tests mount filesystems and must run as root"
        );
        let (archive, mut content) = image.build().unwrap();
        let gate = prepare(&mut content);
        let content = Arc::new(content);
        let dir = tempfile::tempdir().unwrap();
        let core = FsCore::new(archive, wrap(content.clone()));
        let mounted = mount(core, dir.path(), options).unwrap();
        TestMount {
            mounted: Some(mounted),
            gate,
            content,
            dir,
        }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
}

impl Drop for TestMount {
    fn drop(&mut self) {
        if let Some(gate) = &self.gate {
            gate.open();
        }
        if let Some(mounted) = self.mounted.take() {
            if let Err(e) = mounted.unmount() {
                eprintln!("unmounting {}: {e}", self.dir.path().display());
                let _ = unmount(self.dir.path());
            }
        }
    }
}

fn busybox_bytes() -> Vec<u8> {
    (0..300_000u32).map(|i| (i * 7 % 253) as u8).collect()
}

/// The image most tests mount.
fn image() -> ImageBuilder {
    let mut b = ImageBuilder::new();
    b.dir("/etc", 0o755);
    b.file("/etc/hostname", 0o644, b"clip-test\n");
    let passwd = b.file("/etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n");
    b.inode_mut(passwd).mtime_sec = 1_700_000_000;
    b.inode_mut(passwd).mtime_nsec = 123_456_789;
    b.file("/bin/busybox", 0o4755, &busybox_bytes());
    b.hardlink("/bin/ls", "/bin/busybox");
    b.symlink("/bin/sh", "busybox");
    let home = b.dir("/home/user", 0o700);
    b.inode_mut(home).uid = 1000;
    b.inode_mut(home).gid = 1000;
    let secret = b.file("/home/user/secret", 0o600, b"s3cret\n");
    b.inode_mut(secret).uid = 1000;
    b.inode_mut(secret).gid = 1000;
    let mut null = Inode::new(FileType::CharDevice, 0o666);
    (null.rdev_major, null.rdev_minor) = (1, 3);
    b.add("/devices/null", null);
    let mut disk = Inode::new(FileType::BlockDevice, 0o660);
    (disk.rdev_major, disk.rdev_minor, disk.gid) = (8, 1, 6);
    b.add("/devices/sda1", disk);
    b.add("/devices/fifo", Inode::new(FileType::Fifo, 0o600));
    b.file("/empty", 0o644, b"");
    let x = b.file("/xattrs", 0o644, b"x");
    b.inode_mut(x).xattrs = vec![
        (b"user.a".to_vec(), b"first".to_vec()),
        (b"user.b".to_vec(), b"second value".to_vec()),
    ];
    for i in 0..1000 {
        b.file(&format!("/many/f{i:04}"), 0o644, b"");
    }
    b
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

#[test]
#[ignore = "privileged: needs root and FUSE (scripts/test.sh runs it)"]
fn the_mount_shows_the_image() {
    let m = TestMount::new(image(), &MountOptions::default(), None);
    assert!(is_mountpoint(m.root()));

    // Contents.
    assert_eq!(fs::read(m.path("etc/hostname")).unwrap(), b"clip-test\n");
    assert_eq!(fs::read(m.path("bin/busybox")).unwrap(), busybox_bytes());
    assert_eq!(fs::read(m.path("bin/ls")).unwrap(), busybox_bytes());
    assert_eq!(fs::read(m.path("empty")).unwrap(), b"");
    let mut f = File::open(m.path("bin/busybox")).unwrap();
    let mut tail = Vec::new();
    std::io::Seek::seek(&mut f, io::SeekFrom::Start(299_990)).unwrap();
    f.read_to_end(&mut tail).unwrap();
    assert_eq!(tail, busybox_bytes()[299_990..]);
    // Opens keep the page cache: reading it all again does not reach the content source.
    let reads = m.content.reads();
    assert!(reads > 0);
    assert_eq!(fs::read(m.path("bin/ls")).unwrap(), busybox_bytes());
    assert_eq!(fs::read(m.path("etc/hostname")).unwrap(), b"clip-test\n");
    assert_eq!(m.content.reads(), reads);

    // Listings: the root, and a directory that needs several readdir calls.
    let mut names: Vec<String> = fs::read_dir(m.root())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["bin", "devices", "empty", "etc", "home", "many", "xattrs"]
    );
    let many: Vec<String> = fs::read_dir(m.path("many"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(many.len(), 1000);
    let mut sorted = many.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 1000);
    assert_eq!(
        (sorted[0].as_str(), sorted[999].as_str()),
        ("f0000", "f0999")
    );

    // Attributes.
    let root = fs::symlink_metadata(m.root()).unwrap();
    assert_eq!(root.ino(), 1);
    assert_eq!(root.mode(), 0o040755);
    // bin devices etc home many: 2 + 5.
    assert_eq!(root.nlink(), 7);
    let passwd = fs::symlink_metadata(m.path("etc/passwd")).unwrap();
    assert_eq!(passwd.mode(), 0o100644);
    assert_eq!((passwd.uid(), passwd.gid(), passwd.nlink()), (0, 0, 1));
    assert_eq!(passwd.size(), 30);
    assert_eq!(
        (passwd.mtime(), passwd.mtime_nsec()),
        (1_700_000_000, 123_456_789)
    );
    assert_eq!(
        passwd.modified().unwrap(),
        UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789)
    );
    let busybox = fs::symlink_metadata(m.path("bin/busybox")).unwrap();
    let ls = fs::symlink_metadata(m.path("bin/ls")).unwrap();
    assert_eq!(busybox.mode(), 0o104755, "setuid is shown");
    assert_eq!(busybox.ino(), ls.ino(), "a hardlink shares the inode");
    assert_eq!((busybox.nlink(), ls.nlink()), (2, 2));
    assert_eq!(busybox.blocks(), 300_000u64.div_ceil(512));
    let sh = fs::symlink_metadata(m.path("bin/sh")).unwrap();
    assert!(sh.file_type().is_symlink());
    assert_eq!(sh.size(), 7);
    assert_eq!(
        fs::read_link(m.path("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert_eq!(fs::read(m.path("bin/sh")).unwrap(), busybox_bytes());
    let home = fs::symlink_metadata(m.path("home/user")).unwrap();
    assert_eq!(
        (home.mode(), home.uid(), home.gid()),
        (0o040700, 1000, 1000)
    );
    let null = fs::symlink_metadata(m.path("devices/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(major_minor(null.rdev()), (1, 3));
    let disk = fs::symlink_metadata(m.path("devices/sda1")).unwrap();
    assert!(disk.file_type().is_block_device());
    assert_eq!(major_minor(disk.rdev()), (8, 1));
    assert_eq!((disk.mode() & 0o7777, disk.gid()), (0o660, 6));
    let fifo = fs::symlink_metadata(m.path("devices/fifo")).unwrap();
    assert!(fifo.file_type().is_fifo());
    // nodev: the device node is shown but cannot be opened.
    let err = File::open(m.path("devices/null")).unwrap_err();
    assert_eq!(errno(&err), libc::EACCES);

    // Missing names, and missing names under a file.
    let err = fs::symlink_metadata(m.path("etc/shadow")).unwrap_err();
    assert_eq!(errno(&err), libc::ENOENT);
    let err = fs::symlink_metadata(m.path("etc/hostname/x")).unwrap_err();
    assert_eq!(errno(&err), libc::ENOTDIR);

    // Extended attributes, with the size probe.
    let x = m.path("xattrs");
    assert_eq!(rustix::fs::getxattr_query(&x, "user.b").unwrap(), 12);
    let mut buf = [0u8; 64];
    let n = rustix::fs::getxattr(&x, "user.b", &mut buf).unwrap();
    assert_eq!(&buf[..n], b"second value");
    let mut small = [0u8; 3];
    assert_eq!(
        rustix::fs::getxattr(&x, "user.b", &mut small),
        Err(rustix::io::Errno::RANGE)
    );
    assert_eq!(
        rustix::fs::getxattr(&x, "user.missing", &mut buf),
        Err(rustix::io::Errno::NODATA)
    );
    let list = b"user.a\0user.b\0";
    assert_eq!(rustix::fs::listxattr_query(&x).unwrap(), list.len());
    let n = rustix::fs::listxattr(&x, &mut buf).unwrap();
    assert_eq!(&buf[..n], list);
    assert_eq!(
        rustix::fs::listxattr_query(m.path("etc/hostname")).unwrap(),
        0
    );

    // statfs: a full, read-only, nodev, nosuid filesystem.
    let s = rustix::fs::statvfs(m.root()).unwrap();
    let content = 10 + 30 + 300_000 + 7 + 1;
    assert_eq!(s.f_blocks, (content as u64).div_ceil(4096));
    assert_eq!((s.f_bfree, s.f_bavail, s.f_ffree), (0, 0, 0));
    assert_eq!(s.f_bsize, 4096);
    assert_eq!(s.f_namemax, 255);
    assert!(s.f_files > 1000);
    for flag in [
        StatVfsMountFlags::RDONLY,
        StatVfsMountFlags::NODEV,
        StatVfsMountFlags::NOSUID,
    ] {
        assert!(s.f_flag.contains(flag), "{flag:?} in {:?}", s.f_flag);
    }
    let line = mountinfo_line(m.root()).expect("in mountinfo");
    assert!(line.contains(" - fuse.clip clip "), "{line}");
    assert!(line.contains("default_permissions"), "{line}");
    assert!(!line.contains("allow_other"), "{line}");
}

/// `new_decode_dev` of a `dev_t` as std reports it.
fn major_minor(dev: u64) -> (u64, u64) {
    (
        ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff),
        (dev & 0xff) | ((dev >> 12) & !0xff),
    )
}

fn mountinfo_line(path: &Path) -> Option<String> {
    let path = path.to_str()?;
    fs::read_to_string("/proc/self/mountinfo")
        .ok()?
        .lines()
        .rev()
        .find(|l| l.split(' ').nth(4) == Some(path))
        .map(str::to_string)
}

#[test]
#[ignore = "privileged: needs root and FUSE (scripts/test.sh runs it)"]
fn every_write_fails_with_erofs() {
    let m = TestMount::new(image(), &MountOptions::default(), None);
    let hostname = m.path("etc/hostname");
    let attempts: Vec<(&str, io::Result<()>)> = vec![
        ("write", fs::write(&hostname, b"x")),
        (
            "open for append",
            OpenOptions::new().append(true).open(&hostname).map(drop),
        ),
        (
            "open read-write",
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(&hostname)
                .map(drop),
        ),
        ("create", File::create(m.path("etc/new")).map(drop)),
        (
            "chmod",
            fs::set_permissions(&hostname, fs::Permissions::from_mode(0o777)),
        ),
        ("chown", std::os::unix::fs::chown(&hostname, Some(1), None)),
        ("unlink", fs::remove_file(&hostname)),
        ("rmdir", fs::remove_dir(m.path("many"))),
        ("mkdir", fs::create_dir(m.path("newdir"))),
        ("rename", fs::rename(&hostname, m.path("etc/renamed"))),
        ("link", fs::hard_link(&hostname, m.path("etc/link"))),
        (
            "symlink",
            std::os::unix::fs::symlink("target", m.path("etc/symlink")),
        ),
        (
            "setxattr",
            rustix::fs::setxattr(&hostname, "user.x", b"v", rustix::fs::XattrFlags::empty())
                .map_err(io::Error::from),
        ),
        (
            "removexattr",
            rustix::fs::removexattr(m.path("xattrs"), "user.a").map_err(io::Error::from),
        ),
    ];
    for (what, result) in attempts {
        let err = result.expect_err(what);
        assert_eq!(errno(&err), libc::EROFS, "{what}: {err}");
    }
    assert_eq!(fs::read(&hostname).unwrap(), b"clip-test\n");
}

#[test]
#[ignore = "privileged: needs root and FUSE (scripts/test.sh runs it)"]
fn a_slow_read_blocks_nothing_else() {
    let mut image = image();
    image.file_in_layer(1, "/slow", 0o644, &[7u8; 4096]);
    image.file_in_layer(2, "/cold", 0o644, &[9u8; 4096]);
    // One read worker: once the read of /slow holds it, every read that needs the worker
    // queues. Layer 0 is cached; layers 1 (gated) and 2 are not.
    let options = MountOptions {
        threads: 2,
        read_workers: 1,
        ..MountOptions::default()
    };
    let m = TestMount::with(
        image,
        &options,
        |content| {
            content.cache(0, 0..u64::MAX);
            Some(content.gate(1))
        },
        |content| content,
    );
    let gate = m.gate.clone().unwrap();

    let slow = m.path("slow");
    let reader = thread::spawn(move || fs::read(slow));
    assert!(
        gate.wait_for_waiters(1, PATIENCE),
        "the read of /slow never reached the content source"
    );
    let reads = m.content.reads();
    let cached_reads = m.content.cached_reads();

    // While that read holds the only read worker waiting on its "fetch": stat, lookups, a
    // listing, and reads of cached files.
    let (tx, rx) = mpsc::channel();
    let root = m.root().to_path_buf();
    thread::spawn(move || {
        let result = (|| -> io::Result<(u64, usize, Vec<u8>, Vec<u8>)> {
            let size = fs::metadata(root.join("etc/passwd"))?.len();
            let listed = fs::read_dir(root.join("many"))?.count();
            let hostname = fs::read(root.join("etc/hostname"))?;
            let busybox = fs::read(root.join("bin/busybox"))?;
            fs::symlink_metadata(root.join("slow"))?;
            Ok((size, listed, hostname, busybox))
        })();
        let _ = tx.send(result);
    });
    let (size, listed, hostname, busybox) = rx
        .recv_timeout(PATIENCE)
        .expect("other operations were held up by the slow read")
        .unwrap();
    assert_eq!(
        (size, listed, hostname.as_slice()),
        (30, 1000, &b"clip-test\n"[..])
    );
    assert!(busybox == busybox_bytes(), "busybox read from the cache");
    assert_eq!(m.content.reads(), reads, "cached files never reach read_at");
    assert!(m.content.cached_reads() > cached_reads);
    assert!(!reader.is_finished(), "the slow read is still waiting");

    // A read of bytes that are not cached needs the worker, and waits for it.
    let cold = m.path("cold");
    let cold_reader = thread::spawn(move || fs::read(cold));

    gate.open();
    assert_eq!(reader.join().unwrap().unwrap(), vec![7u8; 4096]);
    assert_eq!(cold_reader.join().unwrap().unwrap(), vec![9u8; 4096]);
}

/// Panics reading layer 2 (`read_at`) and layer 3 (`read_cached`); otherwise serves the
/// memory content.
struct Panicky(Arc<MemoryContent>);

impl ContentSource for Panicky {
    fn read_at(
        &self,
        layer: u32,
        offset: u64,
        buf: &mut [u8],
        file_end: u64,
        since: std::time::Instant,
    ) -> Result<usize, ContentError> {
        assert_ne!(layer, 2, "injected panic: read_at of layer 2");
        self.0.read_at(layer, offset, buf, file_end, since)
    }

    fn read_cached(
        &self,
        layer: u32,
        offset: u64,
        buf: &mut [u8],
        file_end: u64,
    ) -> Option<Result<usize, ContentError>> {
        assert_ne!(layer, 3, "injected panic: read_cached of layer 3");
        self.0.read_cached(layer, offset, buf, file_end)
    }
}

#[test]
#[ignore = "privileged: needs root and FUSE (scripts/test.sh runs it)"]
fn a_panicking_read_fails_with_eio_and_the_threads_go_on_serving() {
    let mut image = image();
    image.file_in_layer(2, "/boom", 0o644, b"never served\n");
    image.file_in_layer(3, "/boom-cached", 0o644, b"never served either\n");
    // One request thread and one read worker: if either died, nothing more would be read.
    let options = MountOptions {
        threads: 1,
        read_workers: 1,
        ..MountOptions::default()
    };
    let m = TestMount::with(
        image,
        &options,
        |_| None,
        |content| Arc::new(Panicky(content)),
    );

    // The panic is in read_at, on the read worker.
    let err = fs::read(m.path("boom")).unwrap_err();
    assert_eq!(errno(&err), libc::EIO, "{err}");
    assert_eq!(fs::read(m.path("etc/hostname")).unwrap(), b"clip-test\n");
    assert_eq!(fs::read(m.path("bin/busybox")).unwrap(), busybox_bytes());

    // The panic is in read_cached, on the request thread.
    let err = fs::read(m.path("boom-cached")).unwrap_err();
    assert_eq!(errno(&err), libc::EIO, "{err}");
    assert_eq!(
        fs::read(m.path("etc/passwd")).unwrap(),
        b"root:x:0:0:root:/root:/bin/sh\n"
    );
    // Failed reads left nothing in the page cache: they fail again, the same way.
    let err = fs::read(m.path("boom")).unwrap_err();
    assert_eq!(errno(&err), libc::EIO, "{err}");
    assert_eq!(fs::read_dir(m.root()).unwrap().count(), 9);
}

/// Runs `program args` as `uid` (gid = uid); returns (success, stdout, stderr).
fn run_as(uid: u32, program: &str, args: &[&Path]) -> (bool, String, String) {
    let out = Command::new(program)
        .args(args)
        .uid(uid)
        .gid(uid)
        .current_dir("/")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
#[ignore = "privileged: needs root and FUSE (scripts/test.sh runs it)"]
fn allow_other_lets_other_users_in_and_the_kernel_checks_modes() {
    let m = TestMount::new(image(), &MountOptions::default(), None);
    let (ok, _, stderr) = run_as(1000, "cat", &[&m.path("etc/hostname")]);
    assert!(!ok, "without allow_other, other users are kept out");
    assert!(stderr.contains("Permission denied"), "{stderr}");
    drop(m);

    let options = MountOptions {
        allow_other: true,
        ..MountOptions::default()
    };
    let m = TestMount::new(image(), &options, None);
    assert!(mountinfo_line(m.root()).unwrap().contains("allow_other"));
    let (ok, stdout, stderr) = run_as(1000, "cat", &[&m.path("etc/hostname")]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "clip-test\n");
    // /home/user is 0700 1000:1000.
    let (ok, stdout, stderr) = run_as(1000, "cat", &[&m.path("home/user/secret")]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "s3cret\n");
    let (ok, _, stderr) = run_as(1001, "cat", &[&m.path("home/user/secret")]);
    assert!(!ok);
    assert!(stderr.contains("Permission denied"), "{stderr}");
    let (ok, _, stderr) = run_as(1001, "ls", &[&m.path("home/user")]);
    assert!(!ok);
    assert!(stderr.contains("Permission denied"), "{stderr}");
}

#[test]
#[ignore = "privileged: needs root and FUSE (scripts/test.sh runs it)"]
fn mount_and_unmount_refuse_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let core = || {
        let (archive, content) = image().build().unwrap();
        FsCore::new(archive, Arc::new(content))
    };
    let options = MountOptions::default();

    let missing = dir.path().join("missing");
    let err = mount(core(), &missing, &options).unwrap_err();
    assert!(matches!(err, MountError::MountpointMissing { .. }), "{err}");
    let file = dir.path().join("file");
    fs::write(&file, b"").unwrap();
    let err = mount(core(), &file, &options).unwrap_err();
    assert!(matches!(err, MountError::NotADirectory { .. }), "{err}");

    let err = unmount(dir.path()).unwrap_err();
    assert!(matches!(err, MountError::NotMounted { .. }), "{err}");
    assert!(!is_mountpoint(dir.path()));

    // A second mount on a live one.
    let m = TestMount::new(image(), &options, None);
    let err = mount(core(), m.root(), &options).unwrap_err();
    assert!(matches!(err, MountError::AlreadyMounted { .. }), "{err}");
    assert!(err.to_string().contains("clip umount"), "{err}");
    assert_eq!(fs::read(m.path("etc/hostname")).unwrap(), b"clip-test\n");
    // Regression: a symlink (which a user could plant in a directory of theirs) was followed
    // to the mount; and a directory inside a mount is not that mount.
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(m.root(), &link).unwrap();
    let err = unmount(&link).unwrap_err();
    assert!(matches!(err, MountError::NotMounted { .. }), "{err}");
    let err = unmount(&m.root().join("etc")).unwrap_err();
    assert!(matches!(err, MountError::NotMounted { .. }), "{err}");
    assert!(is_mountpoint(m.root()));
    drop(m);

    // Somebody else's mount is left alone.
    let tmpfs = dir.path().join("tmpfs");
    fs::create_dir(&tmpfs).unwrap();
    rustix::mount::mount(
        "scratch",
        &tmpfs,
        "tmpfs",
        rustix::mount::MountFlags::empty(),
        None,
    )
    .unwrap();
    let err = unmount(&tmpfs);
    rustix::mount::unmount(&tmpfs, rustix::mount::UnmountFlags::DETACH).unwrap();
    let err = err.unwrap_err();
    assert!(matches!(err, MountError::NotAClipMount { .. }), "{err}");
}

#[test]
#[ignore = "privileged: needs root and FUSE (scripts/test.sh runs it)"]
fn wait_returns_once_unmounted_from_outside() {
    let mut m = TestMount::new(image(), &MountOptions::default(), None);
    let mounted = m.mounted.take().unwrap();
    assert!(mounted.is_running());
    let unmounter = mounted.unmounter();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || tx.send(mounted.wait()));

    unmounter.unmount().unwrap();
    rx.recv_timeout(PATIENCE)
        .expect("wait() returns after the unmount")
        .unwrap();
    assert!(!is_mountpoint(m.root()));

    // The same with `clip umount`'s function, on a fresh mount.
    let mut m2 = TestMount::new(image(), &MountOptions::default(), None);
    let mounted = m2.mounted.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || tx.send(mounted.wait()));
    unmount(m2.root()).unwrap();
    rx.recv_timeout(PATIENCE).unwrap().unwrap();
    assert!(!is_mountpoint(m2.root()));
}

#[test]
#[ignore = "privileged: needs root and FUSE (scripts/test.sh runs it)"]
fn a_busy_mount_is_detached_and_keeps_serving_open_files() {
    let m = TestMount::new(image(), &MountOptions::default(), None);
    let mut open = File::open(m.path("etc/passwd")).unwrap();
    unmount(m.root()).unwrap();
    assert!(!is_mountpoint(m.root()), "detached from the tree");
    let mut text = String::new();
    open.read_to_string(&mut text).unwrap();
    assert_eq!(text, "root:x:0:0:root:/root:/bin/sh\n");
    drop(open);
    // The guard's unmount finds nothing to do.
}

/// Kills the helper process on drop, and clears its mount.
struct Helper {
    child: Child,
    dir: TempDir,
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if is_mountpoint(self.dir.path()) {
            let _ = unmount(self.dir.path());
        }
    }
}

#[test]
#[ignore = "privileged: needs root and FUSE (scripts/test.sh runs it)"]
fn clip_umount_clears_a_mount_whose_process_died() {
    assert!(rustix::process::geteuid().is_root(), "needs root");
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "helper_serve_until_killed",
            "--ignored",
            "--nocapture",
        ])
        .env(HELPER_ENV, dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut helper = Helper { child, dir };
    let stdout = helper.child.stdout.take().unwrap();
    let ready = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|line| line == HELPER_READY);
    assert!(ready, "the helper process did not mount");
    let path = helper.dir.path().to_path_buf();
    assert!(is_mountpoint(&path));

    helper.child.kill().unwrap();
    helper.child.wait().unwrap();
    let err = fs::metadata(&path).unwrap_err();
    assert_eq!(errno(&err), libc::ENOTCONN, "{err}");
    assert!(is_mountpoint(&path));
    let (archive, content) = image().build().unwrap();
    let err = mount(
        FsCore::new(archive, Arc::new(content)),
        &path,
        &MountOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, MountError::StaleMount { .. }), "{err}");

    unmount(&path).unwrap();
    assert!(!is_mountpoint(&path));
    assert!(fs::metadata(&path).unwrap().is_dir());
}

const HELPER_ENV: &str = "CLIP_FUSE_TEST_HELPER_MOUNTPOINT";
const HELPER_READY: &str = "clip-fuse-helper: mounted";

/// Not a test: the process that `clip_umount_clears_a_mount_whose_process_died` starts and
/// kills. Mounts at `$CLIP_FUSE_TEST_HELPER_MOUNTPOINT` and serves until killed.
#[test]
#[ignore = "run by clip_umount_clears_a_mount_whose_process_died"]
fn helper_serve_until_killed() {
    let Some(dir) = std::env::var_os(HELPER_ENV) else {
        return;
    };
    let (archive, content) = image().build().unwrap();
    let mounted = mount(
        FsCore::new(archive, Arc::new(content)),
        Path::new(&dir),
        &MountOptions::default(),
    )
    .unwrap();
    println!("{HELPER_READY}");
    mounted.wait().unwrap();
}
