//! The file system mounted for real: ordinary file calls go through FUSE,
//! and a cut leaves exactly what `fsync` made durable. Needs `/dev/fuse`
//! and root (or `fusermount3`), as on the project's machines and in CI.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;

use roomq_powercut::Mounted;

#[test]
fn a_cut_keeps_what_was_synced_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let fs = Mounted::mount(&dir.path().join("live"), &dir.path().join("durable"), &mnt)
        .expect("mounting the power-cut file system (needs /dev/fuse and root)");

    // A directory and a file in it, both synced, with synced data.
    fs::create_dir(mnt.join("data")).unwrap();
    let mut f = File::create(mnt.join("data/db")).unwrap();
    f.write_all(b"synced").unwrap();
    f.sync_data().unwrap();
    File::open(mnt.join("data")).unwrap().sync_all().unwrap();
    File::open(&mnt).unwrap().sync_all().unwrap();
    // Then: an overwrite and an append, not synced; a new file whose data
    // is synced but whose name is not.
    f.write_all_at(b"S", 0).unwrap();
    f.write_all(b" and more").unwrap();
    drop(f);
    let mut g = File::create(mnt.join("data/blob")).unwrap();
    g.write_all(b"blob").unwrap();
    g.sync_all().unwrap();
    drop(g);
    assert_eq!(fs::read(mnt.join("data/db")).unwrap(), b"Synced and more");

    let stats = fs.cut(None).unwrap();
    assert_eq!(fs::read(mnt.join("data/db")).unwrap(), b"synced");
    assert!(!mnt.join("data/blob").exists());
    assert_eq!(stats.files, 1);

    // The file system goes on working after a cut.
    let mut f = OpenOptions::new()
        .append(true)
        .open(mnt.join("data/db"))
        .unwrap();
    f.write_all(b"!").unwrap();
    f.sync_data().unwrap();
    drop(f);
    fs.cut(None).unwrap();
    let mut back = String::new();
    File::open(mnt.join("data/db"))
        .unwrap()
        .read_to_string(&mut back)
        .unwrap();
    assert_eq!(back, "synced!");
    fs.unmount().unwrap();
}
