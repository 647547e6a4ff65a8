//! The data directory on a real file system: group commit, recovery after a cut, corruption
//! named by file and offset, another group's directory refused, rotation and snapshots, and a
//! full disk (a small tmpfs; root).

use super::*;
use std::time::Instant;

const G: u32 = 0xC0;

fn op(i: u64) -> Vec<u8> {
    format!("operation {i} ")
        .repeat(1 + (i % 5) as usize)
        .into_bytes()
}

fn wait_persisted(w: &LogWriter, upto: u64) {
    let start = Instant::now();
    while w.persisted() < upto {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "persisted stuck at {}",
            w.persisted()
        );
        thread::sleep(Duration::from_millis(1));
    }
}

fn append_all(w: &mut LogWriter, range: std::ops::Range<u64>) {
    for i in range {
        while w.append(i, RecordKind::Op, op(i)) == Appended::Full {
            thread::sleep(Duration::from_millis(1));
        }
    }
}

fn positions(r: &Recovered) -> Vec<u64> {
    r.records.iter().map(|(p, _, _)| *p).collect()
}

fn check_ops(r: &Recovered) {
    for (p, kind, bytes) in &r.records {
        assert_eq!(*kind, RecordKind::Op);
        assert_eq!(bytes, &op(*p), "record {p}");
    }
}

#[test]
fn records_come_back_in_order_written_in_fewer_syncs_than_records() {
    let t = tempfile::tempdir().unwrap();
    let dir = DataDir::open(t.path(), G).unwrap();
    let r = recover(&dir).unwrap();
    assert_eq!(
        (r.next, r.records.len(), r.snapshot.is_none()),
        (0, 0, true)
    );
    let mut w = LogWriter::start(&dir, 0, 0, LogOptions::default()).unwrap();
    append_all(&mut w, 0..5000);
    wait_persisted(&w, 5000);
    let batches = w.stats().batches.load(Ordering::Relaxed);
    assert!(batches < 5000, "one sync per record: {batches} batches");
    assert!(batches >= 1);
    w.stop().unwrap();
    let r = recover(&dir).unwrap();
    assert_eq!(positions(&r), (0..5000).collect::<Vec<_>>());
    check_ops(&r);
    assert_eq!((r.next, r.cut.clone()), (5000, None));
    // Reopened, it appends after what it holds.
    let mut w = LogWriter::start(&dir, r.next, r.generation, LogOptions::default()).unwrap();
    append_all(&mut w, 5000..5010);
    w.stop().unwrap();
    let r = recover(&dir).unwrap();
    assert_eq!(positions(&r), (0..5010).collect::<Vec<_>>());
    assert_eq!(dir.segments().unwrap().len(), 1);
}

#[test]
fn a_log_cut_mid_record_loses_that_record_only_and_goes_on_after_it() {
    let t = tempfile::tempdir().unwrap();
    let dir = DataDir::open(t.path(), G).unwrap();
    let mut w = LogWriter::start(&dir, 0, 0, LogOptions::default()).unwrap();
    append_all(&mut w, 0..100);
    w.stop().unwrap();
    let (_, path) = dir.segments().unwrap().pop().unwrap();
    let len = fs::metadata(&path).unwrap().len();
    // Cut 5 bytes into the last record's payload.
    let last = seg::RECORD_HEAD + seg::BODY_HEAD + op(99).len();
    let cut_at = len - last as u64 + 15;
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(cut_at)
        .unwrap();
    let r = recover(&dir).unwrap();
    assert_eq!(positions(&r), (0..99).collect::<Vec<_>>());
    let cut = r.cut.clone().expect("the cut is reported");
    assert_eq!(
        (cut.file, cut.offset, cut.bytes),
        (path.clone(), len - last as u64, 15)
    );
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        len - last as u64,
        "cut on disk too"
    );
    // Position 99 is written again, after the cut.
    let mut w = LogWriter::start(&dir, r.next, r.generation, LogOptions::default()).unwrap();
    append_all(&mut w, 99..120);
    w.stop().unwrap();
    let r = recover(&dir).unwrap();
    assert_eq!(positions(&r), (0..120).collect::<Vec<_>>());
    check_ops(&r);
    assert_eq!(r.cut, None);
}

#[test]
fn corruption_before_the_tail_is_an_error_naming_the_file_and_the_offset() {
    let t = tempfile::tempdir().unwrap();
    let dir = DataDir::open(t.path(), G).unwrap();
    let mut w = LogWriter::start(&dir, 0, 0, LogOptions::default()).unwrap();
    // Two batches at least: wait for the first before the second.
    append_all(&mut w, 0..10);
    wait_persisted(&w, 10);
    append_all(&mut w, 10..20);
    w.stop().unwrap();
    let (_, path) = dir.segments().unwrap().pop().unwrap();
    let mut bytes = fs::read(&path).unwrap();
    let third = seg::HEADER_LEN
        + (0..2)
            .map(|i| seg::RECORD_HEAD + seg::BODY_HEAD + op(i).len())
            .sum::<usize>();
    bytes[third + seg::RECORD_HEAD + seg::BODY_HEAD + 1] ^= 0x20;
    fs::write(&path, &bytes).unwrap();
    let e = recover(&dir).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains(&format!("offset {third}")), "{msg}");
    assert!(matches!(
        e,
        DurableError::Format {
            source: FormatError::Corrupt { .. },
            ..
        }
    ));
    // Nothing was cut: the file is as it was.
    assert_eq!(fs::read(&path).unwrap(), bytes);
}

#[test]
fn another_groups_or_layouts_directory_is_refused_by_name() {
    let t = tempfile::tempdir().unwrap();
    DataDir::open(t.path(), G).unwrap();
    let e = DataDir::open(t.path(), 0xC1).unwrap_err();
    assert!(
        matches!(
            e,
            DurableError::OtherGroup {
                found: G,
                expected: 0xC1,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains(&t.path().display().to_string()));
    fs::write(
        t.path().join(IDENTITY),
        "conveyor data directory\nlayout 9\ngroup 0xc0\n",
    )
    .unwrap();
    let e = DataDir::open(t.path(), G).unwrap_err();
    assert!(matches!(e, DurableError::Layout { found: 9, .. }), "{e}");
    // A first open cut by a crash (its identity file still temporary) is opened again.
    let cut = tempfile::tempdir().unwrap();
    fs::write(cut.path().join("CONVEYOR.tmp"), "conveyor data").unwrap();
    DataDir::open(cut.path(), G).unwrap();
    assert!(recover(&DataDir::open(cut.path(), G).unwrap()).is_ok());
    assert!(
        !cut.path().join("CONVEYOR.tmp").exists(),
        "recovery removes temporary files"
    );
    // A directory holding other files is not taken over.
    let other = tempfile::tempdir().unwrap();
    fs::write(other.path().join("notes.txt"), "mine").unwrap();
    let e = DataDir::open(other.path(), G).unwrap_err();
    assert!(e.to_string().contains("notes.txt"), "{e}");
}

#[test]
fn segments_rotate_and_a_snapshot_lets_the_ones_behind_it_go() {
    let t = tempfile::tempdir().unwrap();
    let dir = DataDir::open(t.path(), G).unwrap();
    let opts = LogOptions {
        segment_bytes: 2000,
        ..LogOptions::default()
    };
    let mut w = LogWriter::start(&dir, 0, 0, opts).unwrap();
    for i in 0..300 {
        append_all(&mut w, i..i + 1);
        wait_persisted(&w, i + 1); // one batch each: segments fill one record at a time
    }
    let segs = dir.segments().unwrap();
    assert!(segs.len() > 5, "{} segments", segs.len());
    let r = recover(&dir).unwrap();
    assert_eq!(positions(&r), (0..300).collect::<Vec<_>>());
    // The state as of the log's end (what the replica hands over: its state now).
    w.snapshot(300, b"state at 300".to_vec());
    append_all(&mut w, 300..310);
    w.stop().unwrap();
    let left = dir.segments().unwrap();
    assert!(
        left.len() < segs.len(),
        "{} segments left of {}",
        left.len(),
        segs.len()
    );
    assert!(left[0].0 <= 300, "the segment holding 300 stays");
    let r = recover(&dir).unwrap();
    assert_eq!(r.generation, 0, "the same history goes on");
    assert_eq!(r.snapshot, Some((300, b"state at 300".to_vec())));
    assert_eq!(positions(&r), (300..310).collect::<Vec<_>>());
    check_ops(&r);
    // A second snapshot replaces the first.
    let mut w = LogWriter::start(&dir, r.next, r.generation, opts).unwrap();
    w.snapshot(310, b"state at 310".to_vec());
    w.stop().unwrap();
    assert_eq!(dir.snapshots().unwrap().len(), 1);
    let r = recover(&dir).unwrap();
    assert_eq!(
        (r.snapshot.map(|s| s.0), r.records.len(), r.next),
        (Some(310), 0, 310)
    );
}

/// A joiner's state is a snapshot ahead of its log: the log goes on from it, and recovery
/// reads the snapshot and what follows.
#[test]
fn a_snapshot_ahead_of_the_log_starts_it_again_from_there() {
    let t = tempfile::tempdir().unwrap();
    let dir = DataDir::open(t.path(), G).unwrap();
    let mut w = LogWriter::start(&dir, 0, 0, LogOptions::default()).unwrap();
    append_all(&mut w, 0..50);
    w.snapshot(80, b"state at 80".to_vec());
    append_all(&mut w, 80..100);
    wait_persisted(&w, 100);
    w.stop().unwrap();
    let r = recover(&dir).unwrap();
    assert_eq!(r.snapshot, Some((80, b"state at 80".to_vec())));
    assert_eq!(positions(&r), (80..100).collect::<Vec<_>>());
    check_ops(&r);
    assert_eq!(r.next, 100);
    let segs = dir.segments().unwrap();
    assert_eq!(segs.len(), 1, "the segment before the jump goes: {segs:?}");
    assert_eq!(segs[0].0, 80);
}

/// The group's state after a restart can lie behind this member's log, which then holds
/// another history at those positions: the snapshot starts a new generation, the log goes on
/// from it, and nothing of the old one is read again. What the writer says is on disk is 0
/// until the snapshot is (never the old history's end).
#[test]
fn a_snapshot_behind_the_log_starts_a_new_generation() {
    let t = tempfile::tempdir().unwrap();
    let dir = DataDir::open(t.path(), G).unwrap();
    let mut w = LogWriter::start(&dir, 0, 0, LogOptions::default()).unwrap();
    append_all(&mut w, 0..50);
    wait_persisted(&w, 50);
    w.snapshot(20, b"the group's state at 20".to_vec());
    assert!(w.persisted() == 0 || w.persisted() == 20);
    append_all(&mut w, 20..30);
    wait_persisted(&w, 30);
    w.stop().unwrap();
    let r = recover(&dir).unwrap();
    assert_eq!(r.generation, 1);
    assert_eq!(r.snapshot, Some((20, b"the group's state at 20".to_vec())));
    assert_eq!(positions(&r), (20..30).collect::<Vec<_>>());
    check_ops(&r);
    assert!(
        dir.older_than(1).unwrap().is_empty(),
        "generation 0 is gone"
    );
    // A crash right after a newer generation's snapshot reached the disk: recovery reads it
    // and removes the rest.
    let state = b"state of generation 2".to_vec();
    let bytes = conveyor_core::durable::snapshot::encode(G, 7, &state);
    write_durably(&dir.path, &snapshot_name(2, 7), &bytes).unwrap();
    let r = recover(&dir).unwrap();
    assert_eq!((r.generation, r.next), (2, 7));
    assert_eq!(r.snapshot, Some((7, state)));
    assert!(r.records.is_empty());
    assert!(dir.older_than(2).unwrap().is_empty());
    let mut w = LogWriter::start(&dir, r.next, r.generation, LogOptions::default()).unwrap();
    append_all(&mut w, 7..9);
    wait_persisted(&w, 9);
    w.stop().unwrap();
    assert_eq!(positions(&recover(&dir).unwrap()), vec![7, 8]);
}

#[test]
fn a_missing_segment_is_a_gap_not_a_shorter_log() {
    let t = tempfile::tempdir().unwrap();
    let dir = DataDir::open(t.path(), G).unwrap();
    let opts = LogOptions {
        segment_bytes: 500,
        ..LogOptions::default()
    };
    let mut w = LogWriter::start(&dir, 0, 0, opts).unwrap();
    for i in 0..60 {
        append_all(&mut w, i..i + 1);
        wait_persisted(&w, i + 1);
    }
    w.stop().unwrap();
    let segs = dir.segments().unwrap();
    assert!(segs.len() >= 3);
    fs::remove_file(&segs[1].1).unwrap();
    let e = recover(&dir).unwrap_err();
    assert!(matches!(e, DurableError::Gap { .. }), "{e}");
    assert!(
        e.to_string().contains(&segs[2].1.display().to_string()),
        "{e}"
    );
}

#[test]
fn a_segment_whose_creation_a_crash_cut_is_removed() {
    let t = tempfile::tempdir().unwrap();
    let dir = DataDir::open(t.path(), G).unwrap();
    let mut w = LogWriter::start(&dir, 0, 0, LogOptions::default()).unwrap();
    append_all(&mut w, 0..5);
    w.stop().unwrap();
    fs::write(t.path().join(segment_name(0, 5)), b"CVYLOG\0\x01\x01").unwrap();
    let r = recover(&dir).unwrap();
    assert_eq!(positions(&r), (0..5).collect::<Vec<_>>());
    assert_eq!(r.cut.map(|c| c.offset), Some(0));
    assert_eq!(dir.segments().unwrap().len(), 1);
}

/// A data directory on a 1 MiB tmpfs: a filler takes the space, the writer's frontier stops
/// (no panic, no lost record, the error counted and said), and once space is back every
/// record appended is on disk, whole and in order.
#[test]
#[ignore = "needs root"]
fn a_full_disk_holds_the_frontier_back_and_loses_nothing() {
    assert!(
        crate::sys::is_root(),
        "this test needs root (it mounts a tmpfs): run it as root"
    );
    let t = tempfile::tempdir().unwrap();
    let mnt = t.path();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(mnt)
        .status()
        .unwrap();
    assert!(ok.success(), "mount tmpfs");
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _u = Unmount(mnt);
    let dir = DataDir::open(&mnt.join("data"), G).unwrap();
    let opts = LogOptions {
        retry: Duration::from_millis(20),
        ..LogOptions::default()
    };
    let mut w = LogWriter::start(&dir, 0, 0, opts).unwrap();
    append_all(&mut w, 0..100);
    wait_persisted(&w, 100);
    // Fill the rest of the file system.
    let filler = mnt.join("filler");
    {
        let mut f = File::create(&filler).unwrap();
        let chunk = vec![7u8; 4096];
        while f.write_all(&chunk).is_ok() {}
    }
    append_all(&mut w, 100..400);
    let start = Instant::now();
    while !w.stats().disk_full.load(Ordering::Relaxed) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the full disk was not noticed"
        );
        thread::sleep(Duration::from_millis(5));
    }
    let held = w.persisted();
    assert!(held < 400, "persisted {held} with no space left");
    thread::sleep(Duration::from_millis(200));
    assert_eq!(w.persisted(), held, "the frontier moved on a full disk");
    assert!(
        w.stats().failed_writes.load(Ordering::Relaxed) >= 2,
        "tried again"
    );
    w.check().unwrap();
    fs::remove_file(&filler).unwrap();
    wait_persisted(&w, 400);
    assert!(!w.stats().disk_full.load(Ordering::Relaxed));
    w.stop().unwrap();
    let r = recover(&dir).unwrap();
    assert_eq!(positions(&r), (0..400).collect::<Vec<_>>());
    check_ops(&r);
    assert_eq!(r.cut, None, "no partial batch left behind");
}
