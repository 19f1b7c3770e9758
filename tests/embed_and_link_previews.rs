//! A shared link unfurls: `/s/{id}` and `/embed/{id}` carry OpenGraph and
//! Twitter card tags with every user string escaped; `/embed/{id}` alone
//! may be framed by any site; `/oembed` answers valid oEmbed JSON (rich,
//! an iframe of the player); a space has an iCalendar file.

mod common;

use common::*;
use serde_json::json;

const TITLE: &str = "<script>alert(\"x\")</script> Q&A, tonight; 'live'";

#[test]
fn cards_embed_oembed_and_calendar() {
    let s = Server::start(&[]);
    let r = call(
        "POST",
        &s.url("/api/v1/spaces"),
        Some(ADMIN),
        Some(
            json!({"title": TITLE, "host_name": "Hana <b>", "scheduled_for": "2030-01-02T03:04:05Z"}),
        ),
    );
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.body["space"]["id"].as_str().expect("id").to_owned();
    let host = r.body["host"]["token"].as_str().expect("token").to_owned();

    let page = reqwest::blocking::get(s.url(&format!("/s/{id}")))
        .expect("page")
        .text()
        .expect("text");
    assert!(
        !page.contains("<script>alert"),
        "unescaped title in the page"
    );
    assert!(!page.contains("Hana <b>"), "unescaped host name");
    let esc = "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; Q&amp;A, tonight; &#39;live&#39;";
    assert!(
        page.contains(&format!("<meta property=\"og:title\" content=\"{esc}\">")),
        "{page}"
    );
    assert!(page.contains("<meta name=\"twitter:card\" content=\"summary_large_image\">"));
    let img = format!("http://127.0.0.1:{}/s/{id}/card.png", s.port);
    assert!(
        page.contains(&format!("<meta property=\"og:image\" content=\"{img}\">")),
        "{page}"
    );
    let png = reqwest::blocking::get(&img).expect("card");
    assert_eq!(png.headers()["content-type"].to_str().unwrap(), "image/png");
    let png = png.bytes().expect("bytes");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let (w, h) = (
        u32::from_be_bytes(png[16..20].try_into().unwrap()),
        u32::from_be_bytes(png[20..24].try_into().unwrap()),
    );
    assert_eq!((w, h), (1200, 630));
    if let Ok(dir) = std::env::var("AMPHI_CARD_OUT") {
        std::fs::write(format!("{dir}/card.png"), &png).expect("write card");
    }
    assert!(page.contains("<meta name=\"amphi:state\" content=\"scheduled\">"));
    assert!(page.contains("Scheduled for 2030-01-02T03:04:05Z · hosted by Hana &lt;b&gt;"));
    assert!(page.contains("application/json+oembed"));
    assert!(page.contains("/assets/space.js"), "still the web app");

    let ics = reqwest::blocking::get(s.url(&format!("/s/{id}/calendar.ics"))).expect("ics");
    assert_eq!(
        ics.headers()["content-type"].to_str().unwrap(),
        "text/calendar; charset=utf-8"
    );
    let ics = ics.text().expect("text");
    assert!(ics.starts_with("BEGIN:VCALENDAR\r\n"), "{ics}");
    assert!(ics.contains("DTSTART:20300102T030405Z\r\n"), "{ics}");
    assert!(
        ics.contains("SUMMARY:<script>alert(\"x\")</script> Q&A\\, tonight\\; 'live'\r\n"),
        "{ics}"
    );

    let r = call(
        "POST",
        &s.url(&format!("/api/v1/spaces/{id}/start")),
        Some(&host),
        None,
    );
    assert_eq!(r.status, 200);
    let embed = reqwest::blocking::get(s.url(&format!("/embed/{id}"))).expect("embed");
    assert_eq!(embed.status(), 200);
    // The app's policy, with any site allowed to frame this page alone.
    let csp = embed.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.ends_with("frame-ancestors *"), "{csp}");
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(embed.headers().get("x-frame-options").is_none());
    let embed = embed.text().expect("text");
    assert!(!embed.contains("<script>alert"));
    assert!(embed.contains(&format!(
        "<h1 id=\"title\" data-testid=\"embed-title\">{esc}</h1>"
    )));
    assert!(embed.contains("<meta name=\"amphi:state\" content=\"live\">"));
    assert!(embed.contains("Live now · 0 listening"));

    let page_url = s.url(&format!("/s/{id}"));
    let encoded: String = page_url
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let r =
        reqwest::blocking::get(s.url(&format!("/oembed?url={encoded}&format=json&maxwidth=400")))
            .expect("oembed");
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let o: serde_json::Value = r.json().expect("valid JSON");
    assert_eq!(o["version"], "1.0");
    assert_eq!(o["type"], "rich");
    assert_eq!(o["title"], TITLE);
    assert_eq!(o["author_name"], "Hana <b>");
    assert_eq!(o["width"], 400);
    assert!(o["height"].as_u64().is_some());
    let html = o["html"].as_str().expect("html");
    assert!(
        html.starts_with(&format!(
            "<iframe src=\"http://127.0.0.1:{}/embed/{id}\"",
            s.port
        )),
        "{html}"
    );
    assert!(!html.contains("<script"), "{html}");
    let r = call(
        "GET",
        &s.url(&format!("/oembed?url={page_url}&format=xml")),
        None,
        None,
    );
    assert_eq!(r.status, 501);
    let r = call(
        "GET",
        &s.url("/oembed?url=http://127.0.0.1/s/0000000000000001"),
        None,
        None,
    );
    assert_eq!(r.status, 404);
    let r = call("GET", &s.url("/oembed?url=javascript:alert(1)"), None, None);
    assert_eq!(r.status, 404);
}
