//! `/metrics`: valid Prometheus text (checked by a strict parser), every
//! metric of the table in docs/DEPLOY.md ("Metrics") there with its type
//! and labels, no private space named, and the access options
//! (`--metrics-token`, `--metrics-addr`) enforced.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::*;

/// One metric family as parsed.
#[derive(Debug, Default)]
struct Family {
    kind: String,
    help: bool,
    /// (sample name, labels, value)
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

fn valid_name(n: &str) -> bool {
    let mut b = n.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_' || c == b':')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}

fn valid_label(n: &str) -> bool {
    valid_name(n) && !n.contains(':')
}

/// Parses `{k="v",...}` at the start of `s`; returns the labels and the rest.
fn parse_labels(s: &str, line: usize) -> (BTreeMap<String, String>, &str) {
    let mut labels = BTreeMap::new();
    let mut rest = s.strip_prefix('{').expect("labels open with {");
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return (labels, r);
        }
        let eq = rest
            .find('=')
            .unwrap_or_else(|| panic!("line {line}: label without ="));
        let key = &rest[..eq];
        assert!(valid_label(key), "line {line}: bad label name {key:?}");
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .unwrap_or_else(|| panic!("line {line}: label value not quoted"));
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => panic!("line {line}: bad escape {other:?}"),
                },
                Some((i, '"')) => break i,
                Some((_, '\n')) | None => panic!("line {line}: unterminated label value"),
                Some((_, c)) => value.push(c),
            }
        };
        assert!(
            labels.insert(key.to_owned(), value).is_none(),
            "line {line}: label {key} twice"
        );
        rest = &rest[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

/// A strict reader of the Prometheus text format 0.0.4: HELP and TYPE
/// once per family and before its samples, a family's samples together,
/// names and labels well formed, values numbers, histograms cumulative
/// with `+Inf` equal to `_count`.
fn parse(text: &str) -> BTreeMap<String, Family> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut closed: BTreeSet<String> = BTreeSet::new();
    for (i, l) in text.lines().enumerate() {
        let line = i + 1;
        if l.is_empty() {
            continue;
        }
        if let Some(r) = l.strip_prefix("# HELP ") {
            let name = r.split(' ').next().unwrap_or_default();
            assert!(valid_name(name), "line {line}: bad name {name:?}");
            assert!(!closed.contains(name), "line {line}: {name} split");
            let f = families.entry(name.to_owned()).or_default();
            assert!(!f.help, "line {line}: HELP of {name} twice");
            assert!(f.samples.is_empty(), "line {line}: HELP after samples");
            f.help = true;
            if current.as_deref() != Some(name)
                && let Some(c) = current.replace(name.to_owned())
            {
                closed.insert(c);
            }
            continue;
        }
        if let Some(r) = l.strip_prefix("# TYPE ") {
            let mut p = r.split(' ');
            let name = p.next().unwrap_or_default();
            let kind = p.next().unwrap_or_default();
            assert!(p.next().is_none(), "line {line}: junk after TYPE");
            assert!(valid_name(name), "line {line}: bad name {name:?}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "line {line}: bad type {kind:?}"
            );
            assert!(!closed.contains(name), "line {line}: {name} split");
            let f = families.entry(name.to_owned()).or_default();
            assert!(f.kind.is_empty(), "line {line}: TYPE of {name} twice");
            assert!(f.samples.is_empty(), "line {line}: TYPE after samples");
            f.kind = kind.to_owned();
            if current.as_deref() != Some(name)
                && let Some(c) = current.replace(name.to_owned())
            {
                closed.insert(c);
            }
            continue;
        }
        if l.starts_with('#') {
            continue;
        }
        let name_end = l.find(['{', ' ']).unwrap_or(l.len());
        let name = &l[..name_end];
        assert!(valid_name(name), "line {line}: bad sample name {name:?}");
        let (labels, rest) = if l[name_end..].starts_with('{') {
            parse_labels(&l[name_end..], line)
        } else {
            (BTreeMap::new(), &l[name_end..])
        };
        let mut p = rest.trim_start_matches(' ').split(' ');
        let v = p.next().unwrap_or_default();
        let value: f64 = match v {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("line {line}: bad value {v:?}")),
        };
        if let Some(ts) = p.next() {
            ts.parse::<i64>()
                .unwrap_or_else(|_| panic!("line {line}: bad timestamp"));
        }
        assert!(p.next().is_none(), "line {line}: junk after the value");
        let fam = current
            .clone()
            .unwrap_or_else(|| panic!("line {line}: sample before any TYPE"));
        let f = families.get_mut(&fam).expect("current family");
        let belongs = if f.kind == "histogram" {
            ["_bucket", "_sum", "_count"]
                .iter()
                .any(|s| name.strip_suffix(s) == Some(fam.as_str()))
        } else {
            name == fam
        };
        assert!(belongs, "line {line}: {name} is not of family {fam}");
        if f.kind == "counter" {
            assert!(value >= 0.0, "line {line}: negative counter");
        }
        if name.ends_with("_bucket") {
            assert!(labels.contains_key("le"), "line {line}: bucket without le");
        }
        f.samples.push((name.to_owned(), labels, value));
    }
    for (name, f) in &families {
        assert!(f.help && !f.kind.is_empty(), "{name}: HELP and TYPE");
        if f.kind != "histogram" {
            continue;
        }
        // Per label set: buckets non-decreasing, +Inf == _count.
        // Labels (without le) → (last bucket, +Inf bucket, count).
        type Series = (f64, Option<f64>, Option<f64>);
        let mut series: BTreeMap<BTreeMap<String, String>, Series> = BTreeMap::new();
        for (n, labels, v) in &f.samples {
            let mut key = labels.clone();
            let le = key.remove("le");
            let e = series.entry(key).or_insert((0.0, None, None));
            if n.ends_with("_bucket") {
                assert!(*v >= e.0, "{name}: buckets not cumulative");
                e.0 = *v;
                if le.as_deref() == Some("+Inf") {
                    e.1 = Some(*v);
                }
            } else if n.ends_with("_count") {
                e.2 = Some(*v);
            }
        }
        for (labels, (_, inf, count)) in series {
            assert!(inf.is_some(), "{name}{labels:?}: no +Inf bucket");
            assert_eq!(inf, count, "{name}{labels:?}: +Inf bucket != count");
        }
    }
    families
}

/// The table of docs/DEPLOY.md ("Metrics"): name, type, label names,
/// whether only a clustered node has it.
fn documented() -> Vec<(String, String, BTreeSet<String>, bool)> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/DEPLOY.md"))
        .expect("docs/DEPLOY.md");
    let section = doc
        .split("\n## Metrics\n")
        .nth(1)
        .expect("a Metrics section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let rows: Vec<_> = section
        .lines()
        .filter(|l| l.starts_with("| `amphi_"))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split(" | ").map(str::trim).collect();
            let labels = cells[2]
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            (
                cells[0].trim_matches('`').to_owned(),
                cells[1].to_owned(),
                labels,
                cells[3].contains("(cluster only)"),
            )
        })
        .collect();
    assert!(rows.len() > 50, "the metrics table has {} rows", rows.len());
    rows
}

/// GET `url` (the metrics text is the body: a JSON string in `Resp`).
fn scrape(url: &str, token: Option<&str>) -> (u16, String, reqwest::header::HeaderMap) {
    let r = call("GET", url, token, None);
    let text = r.body.as_str().map(str::to_owned).unwrap_or_default();
    (r.status, text, r.headers)
}

/// A listener of `live.opus` kept connected (the response is never read).
fn listen(s: &Server, id: &str, token: &str) -> TcpStream {
    let mut t = TcpStream::connect(("127.0.0.1", s.port)).expect("connect");
    write!(
        t,
        "GET /spaces/{id}/live.opus HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    .expect("request");
    t
}

fn sample(f: &Family, want: &[(&str, &str)]) -> Option<f64> {
    f.samples
        .iter()
        .find(|(_, l, _)| {
            want.iter()
                .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.2)
}

#[test]
fn metrics_parse_match_the_documented_table_and_never_name_a_private_space() {
    let s = Server::start(&[]);
    let (public_id, public_host, public_pid) = live_space(&s, "open");
    let (private_id, private_host, private_pid) =
        live_space_with(&s, serde_json::json!({"title": "closed", "public": false}));
    let _p1 = publish_tone(&s, &public_id, &public_host, 440, 20);
    let _p2 = publish_tone(&s, &private_id, &private_host, 660, 20);
    let _l1 = listen(&s, &public_id, &public_host);
    // A private space's listeners need a token: its host's, twice.
    let _l2 = listen(&s, &private_id, &private_host);
    let _l3 = listen(&s, &private_id, &private_host);

    // Both speakers heard at the mixer and the three listeners held.
    let mut families;
    let mut text;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, t, _) = scrape(&s.url("/metrics"), None);
        assert_eq!(status, 200);
        families = parse(&t);
        text = t;
        let speakers = families
            .get("amphi_speaker_packets_total")
            .map_or(0, |f| f.samples.iter().filter(|x| x.2 > 0.0).count());
        let listeners: f64 = families
            .get("amphi_listeners")
            .map_or(0.0, |f| f.samples.iter().map(|x| x.2).sum());
        if speakers >= 2 && listeners >= 3.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "both speakers and three listeners in /metrics:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The private space, its host, never named; its series summed.
    for secret in [&private_id, &private_pid] {
        assert!(
            !text.contains(secret.as_str()),
            "{secret} named in:\n{text}"
        );
    }
    let listeners = &families["amphi_listeners"];
    assert_eq!(
        sample(listeners, &[("space", "private"), ("output", "ogg")]),
        Some(2.0),
        "{listeners:?}"
    );
    assert_eq!(
        sample(listeners, &[("space", &public_id), ("output", "ogg")]),
        Some(1.0),
        "{listeners:?}"
    );
    let speakers = &families["amphi_speaker_packets_total"];
    assert!(
        sample(
            speakers,
            &[("space", "private"), ("participant", "private")]
        )
        .is_some_and(|v| v > 0.0),
        "{speakers:?}"
    );
    assert!(
        sample(
            speakers,
            &[("space", &public_id), ("participant", &public_pid)]
        )
        .is_some_and(|v| v > 0.0),
        "{speakers:?}"
    );

    // Every documented metric is there, with its type and labels; every
    // metric there is documented.
    let table = documented();
    let mut missing = Vec::new();
    for (name, kind, labels, cluster_only) in &table {
        let Some(f) = families.get(name) else {
            if !cluster_only {
                missing.push(name.clone());
            }
            continue;
        };
        assert_eq!(&f.kind, kind, "type of {name}");
        for (_, l, _) in &f.samples {
            let keys: BTreeSet<String> = l.keys().filter(|k| *k != "le").cloned().collect();
            assert_eq!(&keys, labels, "labels of {name}");
        }
    }
    assert!(
        missing.is_empty(),
        "documented but not in /metrics: {missing:?}"
    );
    let names: BTreeSet<&str> = table.iter().map(|r| r.0.as_str()).collect();
    let undocumented: Vec<&String> = families
        .keys()
        .filter(|n| !names.contains(n.as_str()))
        .collect();
    assert!(
        undocumented.is_empty(),
        "in /metrics but not in docs/DEPLOY.md: {undocumented:?}"
    );
}

#[test]
fn a_metrics_token_is_required_when_set() {
    let s = Server::start(&["--metrics-token", "scrape-secret-1"]);
    let (status, _, headers) = scrape(&s.url("/metrics"), None);
    assert_eq!(status, 401);
    assert!(
        headers
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("Bearer")),
        "{headers:?}"
    );
    let (status, body, _) = scrape(&s.url("/metrics"), Some("scrape-secret-2"));
    assert_eq!(status, 401);
    assert!(!body.contains("amphi_"), "{body}");
    // Not the admin token either.
    assert_eq!(scrape(&s.url("/metrics"), Some(ADMIN)).0, 401);
    let (status, body, _) = scrape(&s.url("/metrics"), Some("scrape-secret-1"));
    assert_eq!(status, 200);
    assert!(parse(&body).contains_key("amphi_uptime_seconds"));
    // The rest of the API is as open as before.
    assert_eq!(call("GET", &s.url("/healthz"), None, None).status, 200);
}

#[test]
fn a_metrics_address_takes_metrics_off_the_main_listener() {
    let port = free_port();
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = Server::start_with_env(
        tmp.path(),
        &[],
        &[
            ("AMPHI_METRICS_ADDR", &format!("127.0.0.1:{port}")),
            ("AMPHI_METRICS_TOKEN", "scrape-secret"),
        ],
    );
    assert_eq!(scrape(&s.url("/metrics"), Some("scrape-secret")).0, 404);
    let url = format!("http://127.0.0.1:{port}/metrics");
    assert_eq!(scrape(&url, None).0, 401);
    let (status, body, _) = scrape(&url, Some("scrape-secret"));
    assert_eq!(status, 200);
    let families = parse(&body);
    // The main listener's requests are still counted, and read here.
    assert!(
        families["amphi_http_request_duration_seconds"]
            .samples
            .iter()
            .any(|(_, l, _)| l.get("route").map(String::as_str) == Some("/healthz")),
        "{body}"
    );
}
