//! Mutation fuzzing of the trace readers (issue #23): deterministic, seeded mutants of valid
//! traces — truncations, bit flips, frame length fields with and without checksum fix-up,
//! zeroed regions, footer and index edits, checksum-valid body edits, semantic edits — and
//! special files. Every mutant goes through every reader path in process (open, info, verify,
//! ls, payloads, comparison against its original), which must return a result or a typed
//! error, never panic and never take long; a sample also goes through the `sdtrace` commands
//! (info, info --verify, ls, export, report), which must exit with a documented code.
//!
//! The default run takes a few seconds. `SDTRACE_FUZZ_SCALE=N` multiplies the number of
//! mutants (a longer campaign: `SDTRACE_FUZZ_SCALE=50 cargo test --release --test fuzz`).

mod common;

use common::{Rng, encode, fixed_header, sdtrace, write_mini_run};
use sdtrace::DType;
use sdtrace::analysis::{CompareOptions, compare};
use sdtrace::inspect::{LsFilter, ls_rows, trace_info};
use sdtrace::probe::{TensorView, capture};
use sdtrace::trace::{Codec, Fidelity, TraceReader, TraceWriter, WriterOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The longest one input may take through all reader paths in process.
const MAX_PER_INPUT: Duration = Duration::from_secs(5);

fn scale() -> usize {
    std::env::var("SDTRACE_FUZZ_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
        .max(1)
}

/// The valid traces mutants are made from: the committed example, a mini run with every dtype
/// and both codecs, a trace with a 70 000-byte key and one with escape sequences in a key.
fn bases(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("traces/example.sdt");
    out.push(("example".into(), std::fs::read(example).unwrap()));
    let mini = dir.join("mini.sdt");
    write_mini_run(&mini, 2, 11);
    out.push(("mini".into(), std::fs::read(&mini).unwrap()));
    for (name, key) in [
        ("long_key", "k".repeat(70_000)),
        ("escape_key", "evil\u{1b}[2J\nline".to_string()),
    ] {
        let path = dir.join(format!("{name}.sdt"));
        let mut w =
            TraceWriter::create(&path, &fixed_header(name), WriterOptions::default()).unwrap();
        for (i, k) in ["noise.initial", key.as_str()].into_iter().enumerate() {
            let data = encode(DType::F32, &[1.0, -2.0, 3.5, 0.25]);
            let view = TensorView::new(DType::F32, &[4], &data).unwrap();
            let codec = if i == 0 {
                Codec::Raw
            } else {
                Codec::ShuffleZstd
            };
            let step = (i > 0).then_some(0);
            w.write(capture(k, step, 0, view, Fidelity::Full, codec, 4))
                .unwrap();
        }
        w.finish().unwrap();
        out.push((name.into(), std::fs::read(&path).unwrap()));
    }
    out
}

/// (offset, total length) of every frame after the file header, by walking the frames.
fn frames(b: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = 16usize;
    let end = b.len().saturating_sub(24);
    while at + 16 <= end {
        let len = u64::from_le_bytes(b[at + 8..at + 16].try_into().unwrap()) as usize;
        let total = 16 + len + (8 - len % 8) % 8;
        if at + total > end {
            break;
        }
        out.push((at, total));
        at += total;
    }
    out
}

/// Recompute the checksum of the frame at `at` (after its body was edited).
fn fix_crc(b: &mut [u8], at: usize) {
    let len = u64::from_le_bytes(b[at + 8..at + 16].try_into().unwrap()) as usize;
    let Some(body) = b.get(at + 16..at + 16 + len) else {
        return;
    };
    let mut h = crc32fast::Hasher::new();
    h.update(&b[at..at + 4]);
    h.update(&b[at + 8..at + 16]);
    h.update(body);
    let crc = h.finalize();
    b[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
}

/// One mutant of `base`, chosen by `rng`; the name says what was done.
fn mutate(base: &[u8], rng: &mut Rng) -> (String, Vec<u8>) {
    let mut b = base.to_vec();
    let n = b.len() as u64;
    let fr = frames(base);
    let frame = |rng: &mut Rng| fr[rng.below(fr.len() as u64) as usize];
    match rng.below(10) {
        0 => {
            // Truncation: anywhere, or at a frame boundary ±1.
            let cut = if rng.below(2) == 0 {
                rng.below(n) as usize
            } else {
                let (at, total) = frame(rng);
                (at + total).saturating_add_signed(rng.below(3) as isize - 1)
            };
            b.truncate(cut.min(b.len()));
            (format!("truncate at {cut}"), b)
        }
        1 => {
            let at = rng.below(n) as usize;
            let bit = rng.below(8);
            b[at] ^= 1 << bit;
            (format!("flip bit {bit} of byte {at}"), b)
        }
        2 | 3 => {
            // A frame's length field, with or without checksum fix-up.
            let (at, _) = frame(rng);
            let byte = at + 8 + rng.below(8) as usize;
            b[byte] = match rng.below(3) {
                0 => b[byte] ^ (1 << rng.below(8)),
                1 => 0xff,
                _ => 0,
            };
            let fixed = rng.below(2) == 0;
            if fixed {
                fix_crc(&mut b, at);
            }
            (format!("length byte {byte} (crc fixed: {fixed})"), b)
        }
        4 => {
            let at = rng.below(n) as usize;
            let len = (1 + rng.below(256) as usize).min(b.len() - at);
            b[at..at + len].fill(0);
            (format!("zero {len} bytes at {at}"), b)
        }
        5 => {
            // Footer: index offset, its checksum, the run-end length or the magic.
            let f = b.len() - 24;
            let at = f + rng.below(24) as usize;
            b[at] ^= 1 << rng.below(8);
            if rng.below(2) == 0 {
                let crc = crc32fast::hash(&b[f..f + 8]);
                b[f + 8..f + 12].copy_from_slice(&crc.to_le_bytes());
            }
            (format!("footer byte {at}"), b)
        }
        6..=8 => {
            // A checksum-valid edit of a body: the index (last frame), or any frame.
            let (at, total) = if rng.below(3) == 0 {
                fr[fr.len() - 1]
            } else {
                frame(rng)
            };
            let body = total.saturating_sub(16).max(1);
            let pos = at + 16 + rng.below(body as u64) as usize;
            let pos = pos.min(b.len() - 1);
            b[pos] = match rng.below(3) {
                0 => b[pos] ^ (1 << rng.below(8)),
                1 => rng.below(256) as u8,
                _ => 0xff,
            };
            fix_crc(&mut b, at);
            (format!("crc-valid edit of byte {pos} in frame {at}"), b)
        }
        _ => {
            // Repeat or drop a whole frame (a second run header, a duplicated record).
            let (at, total) = frame(rng);
            let chunk = b[at..at + total].to_vec();
            if rng.below(2) == 0 {
                b.splice(at..at, chunk);
                (format!("repeat frame {at}"), b)
            } else {
                b.drain(at..at + total);
                (format!("drop frame {at}"), b)
            }
        }
    }
}

/// Every reader path on `path`, in process; `original` is what it was made from.
fn read_everything(path: &Path, original: &TraceReader) {
    let Ok(r) = TraceReader::open(path) else {
        return;
    };
    let mut info = trace_info(&r);
    info.verify(&r);
    let _ = sdtrace::inspect::render_info(&info);
    let _ = sdtrace::inspect::info_json(&info);
    let listing = ls_rows(&r, &LsFilter::default());
    let _ = sdtrace::inspect::render_ls(&listing.rows);
    for e in r.entries() {
        if let Ok(m) = r.read_meta(e) {
            let _ = r.read_payload(&m);
        }
    }
    let opts = CompareOptions {
        threads: 1,
        ..CompareOptions::default()
    };
    if let Ok(c) = compare(original, &r, None, &opts) {
        let j = sdtrace::analysis::judge(&c, &opts.tol, &Default::default());
        let _ = sdtrace::report::render(sdtrace::report::Format::Text, &c, &j, &Default::default());
    }
}

#[test]
fn mutants_never_panic_or_hang_in_any_reader_path() {
    let dir = tempfile::tempdir().unwrap();
    let bases = bases(dir.path());
    let path = dir.path().join("mutant.sdt");
    let mut rng = Rng(0x5d7_ace);
    let mut tried = 0;
    for (name, base) in &bases {
        let base_path = dir.path().join(format!("{name}.base.sdt"));
        std::fs::write(&base_path, base).unwrap();
        let original = TraceReader::open(&base_path).unwrap();
        let per_base = if name == "long_key" { 40 } else { 300 } * scale();
        for _ in 0..per_base {
            let (what, bytes) = mutate(base, &mut rng);
            std::fs::write(&path, &bytes).unwrap();
            let t = Instant::now();
            let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                read_everything(&path, &original)
            }));
            assert!(ok.is_ok(), "{name}: {what}: a reader panicked");
            assert!(
                t.elapsed() < MAX_PER_INPUT,
                "{name}: {what}: took {:?}",
                t.elapsed()
            );
            tried += 1;
        }
    }
    assert!(tried >= 900, "{tried}");
    eprintln!(
        "{tried} mutants through every reader path, peak RSS {:?} KiB",
        peak_rss_kib()
    );
    // Bounded memory: the whole campaign stays far below what a reader could be tricked into
    // allocating (lengths of 2^60, zstd bombs).
    if let Some(kib) = peak_rss_kib() {
        assert!(kib < 1 << 20, "peak RSS {kib} KiB");
    }
}

/// This process's peak resident set (Linux), in KiB.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The peak resident set of the largest child process so far (Unix), in KiB.
fn peak_child_rss_kib() -> Option<u64> {
    #[cfg(unix)]
    {
        // SAFETY: getrusage writes one `rusage` into the zeroed struct we own.
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: as above; `u` is a valid, writable `rusage`.
        if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) } == 0 {
            return Some(u.ru_maxrss as u64);
        }
    }
    None
}

/// Special files in place of a trace.
fn specials(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![
        dir.to_path_buf(),
        PathBuf::from("/dev/null"),
        PathBuf::from("/dev/zero"),
        PathBuf::from("/dev/urandom"),
        dir.join("does-not-exist.sdt"),
    ];
    let empty = dir.join("empty.sdt");
    std::fs::write(&empty, b"").unwrap();
    let text = dir.join("text.sdt");
    std::fs::write(&text, b"SDTRACE\0 but then a text file\n").unwrap();
    let png = dir.join("image.sdt");
    std::fs::write(&png, b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR").unwrap();
    out.extend([empty, text, png]);
    #[cfg(unix)]
    {
        let fifo = dir.join("fifo.sdt");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let dangling = dir.join("dangling.sdt");
        std::os::unix::fs::symlink(dir.join("nowhere"), &dangling).unwrap();
        let loop_a = dir.join("loop.sdt");
        std::os::unix::fs::symlink(&loop_a, &loop_a).unwrap();
        out.extend([fifo, dangling, loop_a]);
    }
    out
}

/// The `sdtrace` commands on a sample of mutants and on special files: only documented exit
/// codes (info, ls, export: 0 or 2; report: 0–4), no signal, no hang.
#[test]
fn commands_exit_with_documented_codes_on_mutants_and_special_files() {
    let dir = tempfile::tempdir().unwrap();
    let bases = bases(dir.path());
    let mut rng = Rng(0xf022);
    let mut inputs: Vec<(String, PathBuf)> = Vec::new();
    let reference = dir.path().join("reference.sdt");
    std::fs::write(&reference, &bases[1].1).unwrap();
    for (i, (name, base)) in bases
        .iter()
        .enumerate()
        .filter(|(_, (n, _))| n != "long_key")
    {
        for k in 0..12 * scale() {
            let (what, bytes) = mutate(base, &mut rng);
            let p = dir.path().join(format!("m{i}_{k}.sdt"));
            std::fs::write(&p, bytes).unwrap();
            inputs.push((format!("{name}: {what}"), p));
        }
    }
    for p in specials(dir.path()) {
        inputs.push((format!("special {}", p.display()), p));
    }
    let out = dir.path().join("x.npy");
    let mut histogram = std::collections::BTreeMap::new();
    for (what, p) in &inputs {
        let runs: [(Vec<&std::ffi::OsStr>, &[i32]); 5] = [
            (vec!["info".as_ref(), p.as_os_str()], &[0, 2]),
            (
                vec!["info".as_ref(), "--verify".as_ref(), p.as_os_str()],
                &[0, 2],
            ),
            (vec!["ls".as_ref(), p.as_os_str()], &[0, 2]),
            (
                vec![
                    "export".as_ref(),
                    p.as_os_str(),
                    "noise.initial".as_ref(),
                    out.as_os_str(),
                ],
                &[0, 2],
            ),
            (
                vec!["report".as_ref(), reference.as_os_str(), p.as_os_str()],
                &[0, 1, 2, 3, 4],
            ),
        ];
        for (args, allowed) in runs {
            let a = sdtrace()
                .args(&args)
                .timeout(Duration::from_secs(30))
                .assert();
            let code = a.get_output().status.code();
            let code =
                code.unwrap_or_else(|| panic!("{what}: {args:?} was killed (hang or signal)"));
            assert!(
                allowed.contains(&code),
                "{what}: {args:?} exited {code}: {}",
                String::from_utf8_lossy(&a.get_output().stderr)
            );
            *histogram.entry(code).or_insert(0) += 1;
        }
    }
    eprintln!(
        "{} inputs, {} command runs, exit codes {histogram:?}, peak child RSS {:?} KiB",
        inputs.len(),
        histogram.values().sum::<i32>(),
        peak_child_rss_kib()
    );
    if let Some(kib) = peak_child_rss_kib() {
        assert!(kib < 1 << 20, "a command peaked at {kib} KiB");
    }
    // Every documented outcome of a reader shows up: the set is not trivially all 0 or all 2.
    assert!(
        histogram.contains_key(&0) && histogram.contains_key(&2),
        "{histogram:?}"
    );
    assert!(histogram.contains_key(&4), "{histogram:?}");
}
