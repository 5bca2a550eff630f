//! Tree → bytes → Archive: everything comes back, in the documented order, deterministically.

mod common;

use clip_archive::*;
use common::*;

fn sorted_xattrs(i: &Inode) -> Inode {
    let mut i = i.clone();
    i.xattrs.sort();
    i
}

#[test]
fn every_accessor_round_trips() {
    let (tree, expected) = full_tree();
    let layers = layers();
    let bytes = write_archive(&meta(), &layers, &tree).unwrap();
    let a = Archive::open(&bytes).unwrap();

    assert_eq!(a.meta(), &meta());
    assert_eq!(a.layers().len(), 3);
    for (i, l) in layers.iter().enumerate() {
        let i = i as u32;
        assert_eq!(&a.layer_owned(i).unwrap(), l);
        let info = &a.layers()[i as usize];
        assert_eq!(info.digest, l.digest);
        assert_eq!(info.span_count, l.spans.len() as u64);
        let t = a.spans(i).unwrap();
        assert_eq!(t.len(), l.spans.len());
        for (s, span) in l.spans.iter().enumerate() {
            let got = t.get(s).unwrap();
            assert_eq!(got.compressed_offset, span.compressed_offset);
            assert_eq!(got.compressed_end, span.compressed_end);
            assert_eq!(got.uncompressed_offset, span.uncompressed_offset);
            let end = l
                .spans
                .get(s + 1)
                .map_or(l.uncompressed_size, |n| n.uncompressed_offset);
            assert_eq!(got.uncompressed_end, end);
            assert_eq!(got.bits, span.bits);
            assert_eq!(got.digest, span.digest);
            assert_eq!(got.has_window, !span.window.is_empty());
            assert_eq!(a.window(i, s).unwrap(), span.window.unpack().unwrap());
            assert_eq!(t.find(span.uncompressed_offset), Some(s));
            assert_eq!(t.find(end - 1), Some(s));
        }
        assert_eq!(t.find(l.uncompressed_size), None);
        assert!(matches!(
            t.get(l.spans.len()),
            Err(ArchiveError::NoSuchSpan { .. })
        ));
    }
    assert!(matches!(a.spans(3), Err(ArchiveError::NoSuchLayer(3))));
    assert!(matches!(
        a.window(0, 3),
        Err(ArchiveError::NoSuchSpan { .. })
    ));

    // Unreachable inodes were dropped; hardlinks share one inode.
    assert_eq!(a.inode_count(), tree.inodes.len() as u64 - 2);
    assert_eq!(a.entry_count(), expected.len() as u64);

    for (path, want) in &expected {
        let ino = a
            .resolve_bytes(path)
            .unwrap()
            .unwrap_or_else(|| panic!("{path:?} missing"));
        let got = a.inode_owned(ino).unwrap();
        assert_eq!(got, sorted_xattrs(want), "{}", path.escape_ascii());
        let node = a.inode(ino).unwrap();
        assert_eq!(node.ino(), ino);
        assert_eq!(node.has_xattrs(), !want.xattrs.is_empty());
        for (name, value) in &want.xattrs {
            assert_eq!(a.xattr(ino, name).unwrap(), Some(value.as_slice()));
        }
        assert_eq!(a.xattr(ino, b"user.missing").unwrap(), None);
        match want.file_type {
            FileType::Directory => {
                let names: Vec<Vec<u8>> = a
                    .read_dir(ino)
                    .unwrap()
                    .map(|e| e.unwrap().0.to_vec())
                    .collect();
                let mut sorted = names.clone();
                sorted.sort();
                assert_eq!(names, sorted);
                assert_eq!(node.child_count() as usize, names.len());
                let subdirs = a
                    .read_dir(ino)
                    .unwrap()
                    .filter(|e| {
                        let child = e.as_ref().unwrap().1;
                        a.inode(child).unwrap().file_type() == FileType::Directory
                    })
                    .count();
                assert_eq!(node.nlink() as usize, 2 + subdirs);
                for (name, child) in a.read_dir(ino).unwrap().map(Result::unwrap) {
                    assert_eq!(a.lookup(ino, name).unwrap(), Some(child));
                }
                assert_eq!(a.lookup(ino, b"no-such-name").unwrap(), None);
                assert_eq!(a.lookup(ino, b"").unwrap(), None);
                assert_eq!(a.lookup(ino, b"\xff\xff").unwrap(), None);
                assert!(matches!(
                    a.symlink_target(ino),
                    Err(ArchiveError::NotASymlink(_))
                ));
            }
            FileType::Symlink => {
                assert_eq!(
                    a.symlink_target(ino).unwrap(),
                    want.symlink_target.as_slice()
                );
                assert!(matches!(
                    a.read_dir(ino),
                    Err(ArchiveError::NotADirectory(_))
                ));
            }
            _ => {
                assert!(matches!(
                    a.lookup(ino, b"x"),
                    Err(ArchiveError::NotADirectory(_))
                ));
                assert!(matches!(a.parent(ino), Err(ArchiveError::NotADirectory(_))));
            }
        }
    }

    // Hardlinks.
    let p = a.resolve("/usr/bin/passwd").unwrap().unwrap();
    assert_eq!(a.resolve("usr/bin/chsh").unwrap(), Some(p));
    assert_eq!(a.resolve("/home/user/passwd-copy").unwrap(), Some(p));
    assert_eq!(a.inode(p).unwrap().nlink(), 3);
    assert_eq!(a.inode(p).unwrap().mode(), 0o4755);
    assert_eq!(
        a.inode(a.resolve("/tmp").unwrap().unwrap()).unwrap().mode(),
        0o1777
    );
    let f = a
        .inode(a.resolve("/usr/bin/sgid").unwrap().unwrap())
        .unwrap();
    assert_eq!((f.nlink(), f.mode()), (1, 0o2711));
    assert_eq!(
        f.data(),
        Some(DataLocation {
            layer: 1,
            offset: 1024
        })
    );

    // Devices.
    let big = a.inode(a.resolve("/nodes/big").unwrap().unwrap()).unwrap();
    assert_eq!(
        (big.rdev_major(), big.rdev_minor(), big.size()),
        (4095, 1_048_575, 0)
    );

    // Large ids, negative time.
    let fifo = a.inode(a.resolve("/tmp/fifo").unwrap().unwrap()).unwrap();
    assert_eq!((fifo.uid(), fifo.gid()), (4_000_000_000, 3_000_000));
    let pw = a.inode(p).unwrap();
    assert_eq!(
        (pw.mtime_sec(), pw.mtime_nsec()),
        (-1_234_567_890, 999_999_999)
    );

    // Paths.
    assert_eq!(a.resolve("/").unwrap(), Some(ROOT_INO));
    assert_eq!(a.resolve("").unwrap(), Some(ROOT_INO));
    assert_eq!(a.resolve("/usr/bin/../bin/./passwd").unwrap(), Some(p));
    assert_eq!(a.resolve("/../../usr/bin/passwd").unwrap(), Some(p));
    assert_eq!(a.resolve("/usr/nope/passwd").unwrap(), None);
    assert_eq!(
        a.resolve("/bin/passwd").ok(),
        None,
        "symlinks are not followed"
    );
    assert!(matches!(
        a.resolve("/usr/bin/passwd/x"),
        Err(ArchiveError::NotADirectory(_))
    ));
    let deep: String = (0..40).map(|i| format!("/deep{i}")).collect::<String>() + "/bottom.txt";
    let bottom = a.resolve(&deep).unwrap().unwrap();
    assert_eq!(a.inode(bottom).unwrap().size(), 5);
    assert_eq!(a.parent(ROOT_INO).unwrap(), ROOT_INO);
    let bin = a.resolve("/usr/bin").unwrap().unwrap();
    assert_eq!(a.parent(bin).unwrap(), a.resolve("/usr").unwrap().unwrap());
    assert!(matches!(a.inode(0), Err(ArchiveError::NoSuchInode(0))));
    assert!(matches!(
        a.inode(a.inode_count() + 1),
        Err(ArchiveError::NoSuchInode(_))
    ));

    // Root listing order is byte order.
    let root: Vec<Vec<u8>> = a
        .read_dir(ROOT_INO)
        .unwrap()
        .map(|e| e.unwrap().0.to_vec())
        .collect();
    let want: Vec<&[u8]> = vec![b"bin", b"deep0", b"home", b"nodes", b"tmp", b"usr"];
    assert_eq!(root, want);

    // walk() yields every name once, in depth-first name order.
    let walked: Vec<(Vec<u8>, Ino)> = a.walk().map(Result::unwrap).collect();
    assert_eq!(walked.len() as u64, a.entry_count());
    let mut want_paths: Vec<Vec<u8>> = expected.iter().map(|(p, _)| p.clone()).collect();
    want_paths.sort_by(|x, y| {
        // Depth-first name order == comparing component lists.
        let cx: Vec<&[u8]> = x.split(|&b| b == b'/').collect();
        let cy: Vec<&[u8]> = y.split(|&b| b == b'/').collect();
        cx.cmp(&cy)
    });
    let got_paths: Vec<Vec<u8>> = walked.iter().map(|(p, _)| p.clone()).collect();
    assert_eq!(got_paths, want_paths);
    for (path, ino) in &walked {
        assert_eq!(a.resolve_bytes(path).unwrap(), Some(*ino));
    }

    let sizes = a.section_sizes();
    assert_eq!(sizes.total, bytes.len() as u64);
    assert_eq!(
        sizes.header
            + sizes.meta
            + sizes.attrs
            + sizes.mtimes
            + sizes.inodes
            + sizes.dirents
            + sizes.strings
            + sizes.xattr_index
            + sizes.xattrs
            + sizes.spans
            + sizes.windows,
        sizes.total
    );
    assert_eq!(sizes.inodes, a.inode_count() * 28);
    // Each distinct (seconds, nanoseconds) once: the root's, passwd's, and everyone else's 0.
    assert_eq!(sizes.mtimes, 3 * 12);
    assert_eq!(sizes.dirents, (a.entry_count() - 1) * 10);
}

#[test]
fn inodes_are_numbered_breadth_first_in_name_order() {
    let (tree, _) = full_tree();
    let bytes = write_archive(&meta(), &layers(), &tree).unwrap();
    let a = Archive::open(&bytes).unwrap();
    let inos: Vec<Ino> = a
        .read_dir(ROOT_INO)
        .unwrap()
        .map(|e| e.unwrap().1)
        .collect();
    assert_eq!(inos, (2..2 + inos.len() as u64).collect::<Vec<_>>());
    // Breadth-first: every directory's children have larger numbers than the directory, and
    // the children of earlier directories come first.
    let mut last_first_child = 0;
    for ino in 1..=a.inode_count() {
        if a.inode(ino).unwrap().file_type() != FileType::Directory {
            continue;
        }
        let mut new_children = a
            .read_dir(ino)
            .unwrap()
            .map(|e| e.unwrap().1)
            .filter(|&c| c > ino)
            .peekable();
        if let Some(&first) = new_children.peek() {
            assert!(first > last_first_child);
            last_first_child = first;
        }
    }
}

#[test]
fn output_is_deterministic_and_independent_of_caller_ids() {
    let (tree, _) = full_tree();
    let one = write_archive(&meta(), &layers(), &tree).unwrap();
    let two = write_archive(&meta(), &layers(), &tree).unwrap();
    assert_eq!(one, two);

    // Same tree with the inodes permuted and children listed in another order.
    let n = tree.inodes.len();
    let perm: Vec<usize> = (0..n).rev().collect(); // old index -> new index
    let mut inodes = vec![Inode::new(FileType::Fifo, 0); n];
    let mut children = vec![Vec::new(); n];
    for old in 0..n {
        inodes[perm[old]] = tree.inodes[old].clone();
        let mut kids: Vec<(Vec<u8>, usize)> = tree
            .children
            .get(old)
            .map(|k| k.iter().map(|(name, c)| (name.clone(), perm[*c])).collect())
            .unwrap_or_default();
        kids.reverse();
        children[perm[old]] = kids;
    }
    for inode in &mut inodes {
        inode.xattrs.reverse();
    }
    let permuted = Tree {
        inodes,
        root: perm[tree.root],
        children,
    };
    let three = write_archive(&meta(), &layers(), &permuted).unwrap();
    assert_eq!(one, three);
}

#[test]
fn empty_root_and_no_layers() {
    let tree = Tree::new(dir(0o755));
    let bytes = write_archive(&meta(), &[], &tree).unwrap();
    let a = Archive::open(&bytes).unwrap();
    assert_eq!(a.inode_count(), 1);
    assert_eq!(a.entry_count(), 1);
    assert_eq!(a.read_dir(ROOT_INO).unwrap().count(), 0);
    assert_eq!(a.inode(ROOT_INO).unwrap().nlink(), 2);
    assert_eq!(a.walk().count(), 1);
    assert!(a.layers().is_empty());
}

fn invalid_tree(tree: &Tree) -> String {
    match write_archive(&meta(), &layers(), tree) {
        Err(ArchiveError::InvalidTree(msg)) => msg,
        other => panic!("expected InvalidTree, got {other:?}"),
    }
}

#[test]
fn writer_rejects_invalid_trees() {
    let base = || Tree::new(dir(0o755));

    let mut t = base();
    t.inodes[0] = file(0o644, 0, 0, 0);
    assert!(invalid_tree(&t).contains("root"));

    let mut t = base();
    t.root = 5;
    invalid_tree(&t);

    for name in [&b""[..], b".", b"..", b"a/b", b"a\0b"] {
        let mut t = base();
        t.add(0, name.to_vec(), file(0o644, 0, 0, 0));
        invalid_tree(&t);
    }

    let mut t = base();
    t.add(0, "x", file(0o644, 0, 0, 0));
    t.add(0, "x", file(0o644, 0, 0, 0));
    assert!(invalid_tree(&t).contains("twice"));

    let mut t = base();
    t.link(0, "x", 99);
    assert!(invalid_tree(&t).contains("out of range"));

    // A directory with two names, a cycle, the root as a child.
    let mut t = base();
    let d = t.add(0, "d", dir(0o755));
    t.link(0, "e", d);
    invalid_tree(&t);
    let mut t = base();
    let d = t.add(0, "d", dir(0o755));
    t.link(d, "loop", d);
    invalid_tree(&t);
    let mut t = base();
    let d = t.add(0, "d", dir(0o755));
    t.link(d, "up", 0);
    invalid_tree(&t);

    // A file with children.
    let mut t = base();
    let f = t.add(0, "f", file(0o644, 0, 0, 0));
    t.add(f, "g", file(0o644, 0, 0, 0));
    assert!(invalid_tree(&t).contains("/f"));

    let bad_inodes: Vec<Inode> = vec![
        file(0o100644, 0, 0, 0),
        {
            let mut i = file(0o644, 0, 0, 0);
            i.mtime_nsec = 1_000_000_000;
            i
        },
        {
            let mut i = file(0o644, 5, 0, 0);
            i.data = None;
            i
        },
        file(0o644, 5, 3, 0),
        file(0o644, 5, 1, 20_478),
        file(0o644, 5, 0, 1 << 48),
        {
            let mut i = symlink(b"abc");
            i.size = 2;
            i
        },
        {
            let mut i = dir(0o755);
            i.size = 4096;
            i
        },
        {
            let mut i = file(0o644, 0, 0, 0);
            i.symlink_target = b"x".to_vec();
            i
        },
        {
            let mut i = file(0o644, 0, 0, 0);
            i.rdev_major = 1;
            i
        },
        {
            let mut i = symlink(b"x");
            i.data = Some(DataLocation {
                layer: 0,
                offset: 0,
            });
            i
        },
        {
            let mut i = file(0o644, 0, 0, 0);
            i.xattrs = vec![(b"user.a".to_vec(), vec![]), (b"user.a".to_vec(), vec![1])];
            i
        },
        {
            let mut i = file(0o644, 0, 0, 0);
            i.xattrs = vec![(Vec::new(), vec![])];
            i
        },
        {
            let mut i = file(0o644, 0, 0, 0);
            i.xattrs = vec![(b"user.\0".to_vec(), vec![])];
            i
        },
    ];
    for inode in bad_inodes {
        let mut t = base();
        let d = t.add(0, "dir", dir(0o755));
        t.add(d, "bad", inode.clone());
        let msg = invalid_tree(&t);
        assert!(msg.starts_with("/dir/bad: "), "{msg} for {inode:?}");
    }
}

#[test]
fn writer_rejects_invalid_layers() {
    let tree = Tree::new(dir(0o755));
    let check = |f: &dyn Fn(&mut Vec<Layer>)| {
        let mut l = layers();
        f(&mut l);
        match write_archive(&meta(), &l, &tree) {
            Err(ArchiveError::InvalidLayer { .. }) => {}
            other => panic!("expected InvalidLayer, got {other:?}"),
        }
    };
    check(&|l| l[0].spans.swap(0, 1));
    check(&|l| l[0].spans[1].uncompressed_offset = 0);
    check(&|l| l[0].spans[2].uncompressed_offset = 10_000_001);
    check(&|l| l[0].spans[0].compressed_end = 3_000_001);
    check(&|l| l[0].spans[0].compressed_offset = 1_200_001);
    check(&|l| l[0].spans[0].bits = 8);
    check(&|l| l[0].spans[0].window = Window::new(&[0; 32 * 1024 + 1]).unwrap());
    check(&|l| l[1].spans[0].bits = 1);
    check(&|l| l[2].spans[0].window = Window::new(&[1]).unwrap());
    // Spans start at 0, and compressed ranges never go backwards.
    check(&|l| l[1].spans[0].uncompressed_offset = 1);
    check(&|l| l[0].spans[1].compressed_offset = 5);
    check(&|l| l[0].spans[0].compressed_end = 2_999_000);
}

#[test]
fn errors_say_what_to_do() {
    let e = ArchiveError::UnsupportedVersion {
        found: 2,
        supported: 1,
    };
    assert!(e.to_string().contains("upgrade clip"), "{e}");
    let e = ArchiveError::UnsupportedVersion {
        found: 0,
        supported: 1,
    };
    assert!(e.to_string().contains("clip index"), "{e}");
    let e = ArchiveError::ChecksumMismatch {
        expected: 1,
        found: 2,
    };
    assert!(
        e.to_string().contains("re-create it with `clip index`"),
        "{e}"
    );
    let e = ArchiveError::NotAnArchive {
        found: b"\x89PNG\r\n\x1a\n".to_vec(),
    };
    assert!(e.to_string().contains("\\x89PNG"), "{e}");
    assert!(e.is_corruption());
    assert!(!ArchiveError::NoSuchInode(3).is_corruption());
}

#[test]
fn decompose_gives_back_the_writers_input() {
    let (tree, _) = full_tree();
    let bytes = write_archive(&meta(), &layers(), &tree).unwrap();
    let archive = Archive::open(&bytes).unwrap();
    let (m, l, t) = clip_archive::testing::decompose(&archive).unwrap();
    assert_eq!(m, meta());
    assert_eq!(l, layers());
    assert_eq!(write_archive(&m, &l, &t).unwrap(), bytes);
}

/// Bytes that say when they are dropped.
struct Tracked(Vec<u8>, std::sync::Arc<std::sync::atomic::AtomicBool>);

impl AsRef<[u8]> for Tracked {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.1.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn an_owned_archive_reads_as_a_borrowed_one_and_frees_its_bytes() {
    let (tree, _) = full_tree();
    let bytes = write_archive(&meta(), &layers(), &tree).unwrap();
    let borrowed = Archive::open(&bytes).unwrap();
    let dropped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let owned = Archive::open_owned(Tracked(bytes.clone(), dropped.clone())).unwrap();
    assert_eq!(owned.as_bytes(), &bytes[..]);
    assert_eq!(owned.section_sizes(), borrowed.section_sizes());
    let walk = |a: &Archive<'_>| -> Vec<(Vec<u8>, Inode)> {
        a.walk()
            .map(|e| {
                let (path, ino) = e.unwrap();
                (path, a.inode_owned(ino).unwrap())
            })
            .collect()
    };
    assert_eq!(walk(&owned), walk(&borrowed));
    for layer in 0..borrowed.layers().len() as u32 {
        assert_eq!(
            owned.layer_owned(layer).unwrap(),
            borrowed.layer_owned(layer).unwrap()
        );
    }
    // Checked at open like a borrowed one.
    let mut damaged = bytes.clone();
    let metadata_len = borrowed.metadata_len() as usize;
    damaged[metadata_len - 1] ^= 1;
    assert!(Archive::open_owned(damaged).is_err());
    assert!(!dropped.load(std::sync::atomic::Ordering::SeqCst));
    drop(owned);
    assert!(
        dropped.load(std::sync::atomic::Ordering::SeqCst),
        "freed with the archive"
    );
}
