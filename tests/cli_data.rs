//! The CLI with real data, as processes against a real cluster: binary keys and values (NUL,
//! invalid UTF-8) through --hex, --escaped and standard input; `get` output raw, to a file and
//! in JSON; `scan` text output that writes the same pairs back; a 20 MiB value up to the frame
//! limit, TOO_LARGE beyond it.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::*;

struct Out {
    code: i32,
    stdout: Vec<u8>,
    stderr: String,
}

/// Runs the CLI with `stdin` as its standard input.
fn raftkv(args: &[&str], stdin: &[u8]) -> Out {
    let mut child = Command::new(EXE)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    // A writer thread: a large value would fill the pipe while we wait for the output.
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn ok(o: &Out) -> &[u8] {
    assert_eq!(o.code, 0, "stderr: {}", o.stderr);
    &o.stdout
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn binary_keys_and_values_and_scan_round_trip() {
    let cluster = Cluster::start(3, &[]);
    cluster.wait_leader();
    let ep = format!("--endpoints={}", cluster.endpoints().join(","));
    let ep = ep.as_str();

    // A binary value from standard input (value omitted), under a binary key given in hex.
    let key = b"bin\x00\xffkey";
    let value = b"\x00\x01 not utf-8: \xc3\x28 \xff\n\r\t\\ = end";
    ok(&raftkv(&["put", ep, "--hex", &hex(key)], value));
    // Raw to stdout: the bytes unchanged plus one newline; --out: exactly the bytes.
    let got = raftkv(&["get", ep, "--hex", &hex(key)], b"");
    assert_eq!(ok(&got), [&value[..], b"\n"].concat());
    let file = cluster.dir.path().join("value.out");
    let got = raftkv(
        &[
            "get",
            ep,
            "--hex",
            &hex(key),
            "--out",
            file.to_str().unwrap(),
        ],
        b"",
    );
    assert_eq!(ok(&got), b"");
    assert_eq!(std::fs::read(&file).unwrap(), value);
    let got = raftkv(&["get", ep, "--hex", &hex(key), "--out", "-"], b"");
    assert_eq!(ok(&got), value);
    // JSON: hex for what is not UTF-8.
    let got = raftkv(&["get", ep, "--json", "--hex", &hex(key)], b"");
    let json = String::from_utf8(ok(&got).to_vec()).unwrap();
    assert!(
        json.contains(&format!("\"key_hex\":\"{}\"", hex(key))),
        "{json}"
    );
    assert!(
        json.contains(&format!("\"value_hex\":\"{}\"", hex(value))),
        "{json}"
    );

    // `-` reads standard input too; --escaped keys; a plain put keeps its old output.
    ok(&raftkv(
        &["put", ep, "-e", "s\\x00tdin", "-"],
        b"from stdin",
    ));
    let got = raftkv(&["get", ep, "--escaped", "s\\0tdin"], b"");
    assert_eq!(ok(&got), b"from stdin\n");
    let got = raftkv(&["put", ep, "plain", "hello world"], b"");
    assert!(ok(&got).starts_with(b"OK (version "), "{:?}", got.stdout);
    ok(&raftkv(&["put", ep, "a = b", "x = y"], b""));
    ok(&raftkv(&["put", ep, "nl\nkey", "line1\nline2"], b""));
    // Bad input is a usage error.
    assert_eq!(raftkv(&["get", ep, "--hex", "abc"], b"").code, 2);
    assert_eq!(raftkv(&["get", ep, "--escaped", "\\q"], b"").code, 2);

    // scan: one line per pair, plain text as itself; its lines write the same pairs back.
    let before = ok(&raftkv(&["scan", ep, "--all"], b"")).to_vec();
    let text = String::from_utf8(before.clone()).expect("scan output is UTF-8 text");
    eprintln!("scan output:\n{text}");
    assert!(text.contains("plain = hello world\n"), "{text}");
    assert!(text.contains("a \\= b = x = y\n"), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    let json_before = ok(&raftkv(&["scan", ep, "--all", "--json"], b"")).to_vec();
    for line in &lines {
        let (k, _) = line.split_once(" = ").unwrap();
        ok(&raftkv(&["del", ep, "-e", k], b""));
    }
    assert_eq!(ok(&raftkv(&["scan", ep, "--all"], b"")), b"");
    for line in &lines {
        let (k, v) = line.split_once(" = ").unwrap();
        ok(&raftkv(&["put", ep, "-e", k, v], b""));
    }
    assert_eq!(
        ok(&raftkv(&["scan", ep, "--all"], b"")),
        before,
        "scan output after writing it back"
    );
    let got = raftkv(&["get", ep, "--hex", &hex(key), "--out", "-"], b"");
    assert_eq!(ok(&got), value, "the binary value after the round trip");
    // Same pairs (the versions are new): JSON without the versions is identical.
    let strip = |j: &[u8]| {
        let s = String::from_utf8(j.to_vec()).unwrap();
        s.split(",\"version\":")
            .map(|p| p.trim_start_matches(|c: char| c.is_ascii_digit()))
            .collect::<String>()
    };
    let json_after = ok(&raftkv(&["scan", ep, "--all", "--json"], b"")).to_vec();
    assert_eq!(strip(&json_after), strip(&json_before));
    assert!(strip(&json_after).contains(&hex(value)));

    // keys-only and a continuation key printed in the escape syntax.
    let got = raftkv(&["scan", ep, "--keys-only", "--limit=1"], b"");
    assert_eq!(ok(&got), b"a \\= b\n");
    assert!(
        got.stderr.contains("--escaped --start 'bin\\0\\xffkey'"),
        "{}",
        got.stderr
    );
    let got = raftkv(
        &[
            "scan",
            ep,
            "--keys-only",
            "--limit=1",
            "-e",
            "--start",
            "bin\\0\\xffkey",
        ],
        b"",
    );
    assert_eq!(ok(&got), b"bin\\0\\xffkey\n");
}

/// 20 MiB values: through standard input (no argument list limit) up to the frame limit when
/// client and servers raise --max-frame; beyond the client's limit a clear TOO_LARGE (exit 4)
/// before anything is sent.
#[test]
fn twenty_mib_value_from_stdin_up_to_the_frame_limit() {
    let max = (32 << 20).to_string();
    let cluster = Cluster::start(
        3,
        // Default ticks (election timeout 500-1000 ms): a 20 MiB entry takes several event
        // loop passes of tens of ms each to copy, checksum and send, which the test harness's
        // 10 ms ticks would turn into elections.
        &[
            &format!("--max-frame={max}"),
            "--segment-size=67108864",
            "--tick-ms=50",
        ],
    );
    cluster.wait_leader();
    let ep = format!("--endpoints={}", cluster.endpoints().join(","));
    let mf = format!("--max-frame={max}");
    let value: Vec<u8> = (0..20u32 << 20).map(|i| (i % 251) as u8).collect();

    // Default client limit (16 MiB): refused at once, not sent.
    let start = Instant::now();
    let got = raftkv(&["put", &ep, "big"], &value);
    eprintln!(
        "20 MiB with the default --max-frame: exit {} after {:?}: {}",
        got.code,
        start.elapsed(),
        got.stderr
    );
    assert_eq!(got.code, 4, "{}", got.stderr);
    assert!(
        got.stderr.contains("TOO_LARGE") && got.stderr.contains("not sent"),
        "{}",
        got.stderr
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );

    // Raised on both sides: stored and read back byte for byte. A generous deadline: a 20 MiB
    // entry is replicated to two followers and synced on a shared disk.
    let start = Instant::now();
    ok(&raftkv(
        &["put", &ep, &mf, "--timeout-ms=60000", "big"],
        &value,
    ));
    eprintln!("20 MiB put took {:?}", start.elapsed());
    let file = cluster.dir.path().join("big.out");
    ok(&raftkv(
        &[
            "get",
            &ep,
            &mf,
            "--timeout-ms=60000",
            "big",
            "--out",
            file.to_str().unwrap(),
        ],
        b"",
    ));
    let back = std::fs::read(&file).unwrap();
    assert!(
        back == value,
        "read back {} bytes, wrote {}",
        back.len(),
        value.len()
    );
}

/// Scan responses are bounded by bytes, not only by count (issue #16): 20 values of 1 MiB
/// would be one 20 MiB response, more than the 16 MiB default frame, which the client could
/// not read. Each page holds at most half a frame of keys and values
/// (`limits::max_scan_page`), so `scan --all` reads every pair in several pages.
#[test]
fn scan_over_large_values_pages_by_bytes() {
    // 4 MiB segments: a 1 MiB value must fit one (the harness' default is 1 MiB segments).
    let cluster = Cluster::start(3, &["--segment-size=4194304"]);
    cluster.wait_leader();
    let mut c = cluster.client();
    let value = vec![b'v'; 1 << 20];
    for i in 0..20 {
        c.put(format!("k{i:02}").as_bytes(), &value).unwrap();
    }
    let ep = format!("--endpoints={}", cluster.endpoints().join(","));
    let o = raftkv(
        &["scan", ep.as_str(), "--prefix", "k", "--all", "--keys-only"],
        b"",
    );
    let listed = ok(&o)
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .count();
    assert_eq!(listed, 20, "stdout: {}", String::from_utf8_lossy(&o.stdout));
    // With values: one page is at most half a 16 MiB frame, so at least 3 pages for 20 MiB.
    let mut req = raftkv::pb::kvpb::Scan {
        prefix: bytes::Bytes::from_static(b"k"),
        ..Default::default()
    };
    let mut pages = 0;
    let mut pairs = 0;
    loop {
        let r = c.scan(req.clone()).unwrap();
        let bytes: usize = r.kvs.iter().map(|kv| kv.key.len() + kv.value.len()).sum();
        let half = raftkv::limits::max_scan_page(raftkv::limits::DEFAULT_MAX_FRAME);
        assert!(
            bytes <= half,
            "page {pages}: {bytes} bytes of pairs, more than half a frame ({half})"
        );
        pages += 1;
        pairs += r.kvs.len();
        if r.next_key.is_empty() {
            break;
        }
        req.start = r.next_key;
    }
    assert_eq!(pairs, 20);
    assert!(pages >= 3, "{pages} pages for 20 MiB of values");
}
