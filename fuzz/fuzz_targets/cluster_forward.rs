#![no_main]
//! API calls forwarded to a space's owner (`amphi.node.<node>.http`) and
//! the owner's replies: any node on the bus can send either.
//! Properties: a request or reply that decodes re-encodes to exactly its
//! bytes and decodes again to the same value. The same bytes, read as a
//! call with `arbitrary`, check the encoders: any call encodes to a
//! message that decodes, to the call itself cut only where the format
//! bounds it (method 255 bytes, path 65,535, at most 16 headers whose name
//! and value fit their length fields, body `MAX_BODY`).
use amphi_cluster::forward::{MAX_BODY, MAX_HEADERS};
use amphi_cluster::{ForwardReply, ForwardRequest};
use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

/// The fields of a request and a reply, as a node could fill them.
#[derive(Debug, Arbitrary)]
struct Call {
    method: String,
    path: String,
    /// The method and the path are repeated this many times more, so that
    /// fields past their length fields are reached within libFuzzer's
    /// input size.
    grow_method: u8,
    grow_path: u8,
    headers: Vec<(String, String)>,
    status: u16,
    body: Vec<u8>,
}

/// The longest prefix of `s` of at most `max` bytes that ends on a
/// character boundary.
fn prefix(s: &str, max: usize) -> String {
    s.chars()
        .scan(0, |len, c| {
            *len += c.len_utf8();
            (*len <= max).then_some(c)
        })
        .collect()
}

/// The headers that cross the bus, in order.
fn bounded_headers(h: &[(String, String)]) -> Vec<(String, String)> {
    h.iter()
        .filter(|(n, v)| n.len() <= 255 && v.len() <= usize::from(u16::MAX))
        .take(MAX_HEADERS)
        .cloned()
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let msg = Bytes::copy_from_slice(data);

    if let Ok(req) = ForwardRequest::decode(&msg) {
        assert!(req.headers.len() <= MAX_HEADERS && req.body.len() <= MAX_BODY);
        let again = req.encode();
        assert_eq!(
            &again[..],
            data,
            "a decoded request does not re-encode to its bytes"
        );
        assert_eq!(ForwardRequest::decode(&again).as_ref(), Ok(&req));
    }

    if let Ok(rep) = ForwardReply::decode(&msg) {
        assert!(rep.headers.len() <= MAX_HEADERS && rep.body.len() <= MAX_BODY);
        let again = rep.encode();
        assert_eq!(
            &again[..],
            data,
            "a decoded reply does not re-encode to its bytes"
        );
        assert_eq!(ForwardReply::decode(&again).as_ref(), Ok(&rep));
    }

    // The encoders, on any call.
    let Ok(call) = Call::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let method = call.method.repeat(1 + usize::from(call.grow_method));
    let path = call.path.repeat(1 + usize::from(call.grow_path));
    let body = Bytes::from(call.body);
    let req = ForwardRequest {
        method,
        path,
        headers: call.headers,
        body: body.clone(),
    };
    let want = ForwardRequest {
        method: prefix(&req.method, 255),
        path: prefix(&req.path, usize::from(u16::MAX)),
        headers: bounded_headers(&req.headers),
        body: body.slice(..body.len().min(MAX_BODY)),
    };
    assert_eq!(
        ForwardRequest::decode(&req.encode()),
        Ok(want),
        "an encoded request does not decode back"
    );
    let rep = ForwardReply {
        status: call.status,
        headers: req.headers,
        body: body.clone(),
    };
    let want = ForwardReply {
        status: rep.status,
        headers: bounded_headers(&rep.headers),
        body: body.slice(..body.len().min(MAX_BODY)),
    };
    assert_eq!(
        ForwardReply::decode(&rep.encode()),
        Ok(want),
        "an encoded reply does not decode back"
    );
});
