//! Output framing: whole lines under the right label, long, unterminated and
//! non-UTF-8 lines, stdout/stderr separation and label padding.

mod util;

use std::collections::BTreeMap;

use util::*;

/// The line `flood` writes for `tag` and `seq` (without the newline).
fn flood_line(tag: &str, seq: u64, pad: char) -> String {
    format!("{tag} {seq} {}", pad.to_string().repeat(10 + (seq % 90) as usize))
}

#[test]
fn flood_lines_arrive_whole_once_under_their_label() {
    const CHILDREN: u64 = 16;
    const LINES: u64 = 5000;
    let out = Brood::new("flood")
        .opts(["-n", &CHILDREN.to_string()])
        .script("flood")
        .args([LINES.to_string()])
        .run();
    out.assert_code(0).assert_no_panic();
    let mut per_label: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for line in out.stdout_lines() {
        let (label, rest) = split_prefixed(&line).unwrap_or_else(|| panic!("unprefixed line {line:?}"));
        let tag = label
            .strip_prefix("flood.")
            .unwrap_or_else(|| panic!("bad label in {line:?}"));
        let seq: u64 = rest
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("broken line {line:?}"));
        // The whole line, and the tag inside it matches the label's counter.
        assert_eq!(
            rest,
            flood_line(tag, seq, 'o'),
            "broken or mislabelled line {line:?}"
        );
        per_label.entry(label.to_owned()).or_default().push(seq);
    }
    assert_eq!(
        per_label.len() as u64,
        CHILDREN,
        "labels: {:?}",
        per_label.keys().collect::<Vec<_>>()
    );
    let want: Vec<u64> = (1..=LINES).collect();
    for (label, seqs) in &per_label {
        // Each line exactly once, in the order the child wrote them.
        assert!(
            seqs == &want,
            "{label}: {} lines, not 1..={LINES} in order",
            seqs.len()
        );
    }
}

/// Splits brood's stdout into lines (bytes), checking each is `bytes.1 | ...`.
fn bytes_payloads(out: &Output) -> Vec<Vec<u8>> {
    assert!(
        out.stdout.ends_with(b"\n"),
        "stdout must end with a newline{}",
        out.context()
    );
    out.stdout[..out.stdout.len() - 1]
        .split(|&b| b == b'\n')
        .map(|line| {
            let (label, rest) = split_prefixed_bytes(line).unwrap_or_else(|| {
                panic!(
                    "unprefixed line {:?}",
                    String::from_utf8_lossy(&line[..line.len().min(80)])
                )
            });
            assert_eq!(label, b"bytes.1");
            rest.to_vec()
        })
        .collect()
}

#[test]
fn non_utf8_bytes_pass_through() {
    let out = Brood::new("non-utf8").opts(["-n", "1"]).script("bytes").run();
    out.assert_code(0).assert_no_panic();
    let payloads = bytes_payloads(&out);
    assert_eq!(
        payloads.first().map(Vec::as_slice),
        Some(&b"\xff\xfe raw"[..]),
        "{}",
        out.context()
    );
}

#[test]
fn long_line_is_cut_into_64k_pieces_each_prefixed() {
    let out = Brood::new("long-line").opts(["-n", "1"]).script("bytes").run();
    out.assert_code(0).assert_no_panic();
    let payloads = bytes_payloads(&out);
    // raw line, 4 pieces of the 200000-byte line, tail.
    let lens: Vec<usize> = payloads.iter().map(Vec::len).collect();
    assert_eq!(lens, vec![6, 65536, 65536, 65536, 3392, 4], "payload lengths");
    let joined: Vec<u8> = payloads[1..5].concat();
    assert!(
        joined == b"0123456789".repeat(20000),
        "the pieces do not re-assemble the long line"
    );
}

#[test]
fn unterminated_last_line_is_completed() {
    let out = Brood::new("unterminated").opts(["-n", "1"]).script("bytes").run();
    out.assert_code(0).assert_no_panic();
    let payloads = bytes_payloads(&out);
    assert_eq!(
        payloads.last().map(Vec::as_slice),
        Some(&b"tail"[..]),
        "{}",
        out.context()
    );
}

#[test]
fn child_stderr_goes_only_to_brood_stderr() {
    let out = Brood::new("stderr-split")
        .opts(["-n", "2"])
        .env("FLOOD_STDERR", "1")
        .script("flood")
        .args(["300"])
        .run();
    out.assert_code(0).assert_no_panic();
    let mut out_count = 0;
    for line in out.stdout_lines() {
        let (label, rest) =
            split_prefixed(&line).unwrap_or_else(|| panic!("unprefixed stdout line {line:?}"));
        let tag = label.strip_prefix("flood.").unwrap();
        let seq: u64 = rest.split(' ').nth(1).unwrap().parse().unwrap();
        assert_eq!(
            rest,
            flood_line(tag, seq, 'o'),
            "stdout carries a non-stdout line"
        );
        out_count += 1;
    }
    let mut err_count = 0;
    for line in out.stderr_lines() {
        if line.starts_with("brood: ") {
            continue;
        }
        let (label, rest) =
            split_prefixed(&line).unwrap_or_else(|| panic!("unprefixed stderr line {line:?}"));
        let tag = label.strip_prefix("flood.").unwrap();
        let seq: u64 = rest.split(' ').nth(1).unwrap().parse().unwrap();
        assert_eq!(
            rest,
            flood_line(tag, seq, 'e'),
            "stderr carries a non-stderr line"
        );
        err_count += 1;
    }
    assert_eq!((out_count, err_count), (600, 600), "{}", out.context());
}

#[test]
fn brood_stdout_carries_only_child_stdout() {
    let out = Brood::new("stdout-only")
        .opts(["-n", "3", "-v"])
        .script("hello")
        .run();
    out.assert_code(0);
    let lines = out.stdout_lines();
    assert_eq!(lines.len(), 3, "{}", out.context());
    for line in &lines {
        let (label, rest) = split_prefixed(line).unwrap_or_else(|| panic!("not a child line: {line:?}"));
        assert!(label.starts_with("hello."), "{line:?}");
        assert!(rest.starts_with("Hello from child PID "), "{line:?}");
    }
    // brood's own words are on stderr.
    out.assert_stderr_contains("brood: summary: ");
}

#[test]
fn brood_messages_go_to_stderr_with_brood_prefix() {
    let out = Brood::new("messages")
        .opts(["-n", "1", "-v"])
        .script("hello")
        .run();
    out.assert_code(0);
    let spawn = &out.events_of("spawn")[0];
    let pid = spawn["pid"].as_i64().unwrap();
    out.assert_stderr_contains(&format!("brood: spawned hello.1 pid {pid}"));
    out.assert_stderr_contains(&format!("brood: hello.1 pid {pid} exited with code 0"));
}

#[test]
fn labels_are_padded_to_a_common_width() {
    let out = Brood::new("padding").opts(["-n", "10"]).script("hello").run();
    out.assert_code(0);
    let lines = out.stdout_lines();
    assert_eq!(lines.len(), 10, "{}", out.context());
    let columns: Vec<usize> = lines.iter().map(|l| l.find(" | ").expect("prefixed")).collect();
    assert!(
        columns.iter().all(|&c| c == columns[0]),
        "separators not aligned:\n{}",
        lines.join("\n")
    );
    assert!(
        lines.iter().any(|l| l.starts_with("hello.1  | ")),
        "hello.1 padded to hello.10's width:\n{}",
        lines.join("\n")
    );
    assert!(
        lines.iter().any(|l| l.starts_with("hello.10 | ")),
        "{}",
        lines.join("\n")
    );
}

#[test]
fn lister_output_is_relayed_in_order() {
    let b = Brood::new("lister");
    let root = b.dir().join("tree");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("sub/b.txt"), "second\nthird\n").unwrap();
    std::fs::write(root.join("a.txt"), "first\n").unwrap();
    let r = root.to_str().unwrap().to_owned();
    let out = b
        .opts(["-n", "1", "--no-prefix"])
        .script("lister")
        .args([&r])
        .run();
    out.assert_code(0);
    assert_eq!(
        out.stdout_lines(),
        vec![
            format!("dir: {r}"),
            format!("file: {r}/a.txt"),
            format!("dir: {r}/sub"),
            format!("file: {r}/sub/b.txt"),
        ],
        "{}",
        out.context()
    );
}

#[test]
fn scanner_failure_is_a_failed_child() {
    let out = Brood::new("scanner-missing")
        .opts(["-n", "1"])
        .script("scanner")
        .args(["/nonexistent/file"])
        .run();
    out.assert_code(1).assert_no_panic();
    out.assert_stderr_contains("scanner.1 | scanner: cannot open /nonexistent/file");
    assert_eq!(
        out.events_of("exit")[0]["code"].as_i64(),
        Some(1),
        "{}",
        out.context()
    );
}

#[test]
fn stalled_stdout_reader_stalls_neither_signals_nor_reaping_and_loses_nothing() {
    const LIMIT_KIB: u64 = 24 * 1024;
    let brood = Brood::new("stalled")
        .opts(["-n", "4"])
        .stdout_paused()
        .script("flood")
        .args(["200000"])
        .start();
    brood.wait_spawned(4);
    // Nobody reads brood's stdout. The children could write ~48 MB in this
    // time; brood must make them wait instead of buffering it all.
    let mut peak = 0;
    let stall = std::time::Instant::now();
    while stall.elapsed() < std::time::Duration::from_millis(1500) {
        peak = peak.max(rss_kib(brood.pid()).unwrap_or(0));
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        peak < LIMIT_KIB,
        "brood's RSS reached {peak} KiB with a stalled reader"
    );
    // Signals and reaping still work while stdout is stalled.
    brood.signal(nix::sys::signal::Signal::SIGTERM);
    brood.wait_events("4 exits while stdout is stalled", |ev| {
        events_of(ev, "exit").len() == 4
    });
    brood.resume_stdout();
    let out = brood.finish();
    out.assert_code(0).assert_no_panic();
    // Nothing lost: each child's lines are 1..=k in order and whole, except
    // that the very last one may be cut where the child was killed.
    let mut per_label: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in out.stdout_lines() {
        let (label, rest) = split_prefixed(&line).unwrap_or_else(|| panic!("unprefixed line {line:?}"));
        per_label
            .entry(label.to_owned())
            .or_default()
            .push(rest.to_owned());
    }
    assert_eq!(per_label.len(), 4, "{:?}", per_label.keys());
    for (label, lines) in &per_label {
        let tag = label.strip_prefix("flood.").unwrap();
        let (last, whole) = lines.split_last().unwrap();
        for (i, line) in whole.iter().enumerate() {
            assert_eq!(
                line,
                &flood_line(tag, i as u64 + 1, 'o'),
                "{label}: line {}",
                i + 1
            );
        }
        let expected_last = flood_line(tag, whole.len() as u64 + 1, 'o');
        assert!(
            expected_last.starts_with(last.as_str()),
            "{label}: last line {last:?} is not (a prefix of) {expected_last:?}"
        );
    }
    eprintln!(
        "peak RSS with a stalled reader: {peak} KiB; lines: {:?}",
        per_label.values().map(Vec::len).collect::<Vec<_>>()
    );
}

#[test]
fn no_color_codes_when_output_is_not_a_terminal() {
    let out = Brood::new("no-color")
        .opts(["-n", "2"])
        .script("crash")
        .args(["{n}"])
        .run();
    out.assert_code(1);
    assert!(
        !out.stdout.contains(&0x1b),
        "escape codes on stdout{}",
        out.context()
    );
    assert!(
        !out.stderr.contains(&0x1b),
        "escape codes on stderr{}",
        out.context()
    );
}
