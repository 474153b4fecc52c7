//! `nim_params`: a NIM form body through `Params::parse` and every accessor the handlers use, on every name
//! the body carries and on the names the handlers ask for; and the lenient JSON reader on the raw text.
//! Checked: no panic; a value that is plain JSON reads the same through the lenient reader; accessors agree
//! with each other (an integer or a list is also present as text).

use confab_api_nim::params::{Params, lenient_json};

/// Names the handlers read (a sample across modules); the body's own names are tried too.
const NAMES: &[&str] = &[
    "accid",
    "from",
    "to",
    "ope",
    "type",
    "body",
    "msgid",
    "accids",
    "tid",
    "owner",
    "members",
    "begintime",
    "endtime",
    "limit",
    "reverse",
    "antispam",
    "robotaccount",
    "pushcontent",
    "ext",
    "option",
    "token",
];

pub fn run(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(plain) = serde_json::from_str::<serde_json::Value>(text) {
            assert_eq!(lenient_json(text).ok(), Some(plain), "plain JSON reads as itself");
        } else {
            let _ = lenient_json(text);
        }
    }
    let Ok(params) = Params::parse(data) else {
        return;
    };
    let body_names: Vec<String> = serde_urlencoded::from_bytes::<Vec<(String, String)>>(data)
        .map(|pairs| pairs.into_iter().map(|(k, _)| k).collect())
        .unwrap_or_default();
    for name in NAMES.iter().copied().chain(body_names.iter().map(String::as_str)) {
        let text = params.opt(name);
        assert_eq!(params.req(name).ok(), text);
        if let Ok(Some(_)) = params.int(name) {
            assert!(text.is_some());
        }
        let _ = params.req_int(name);
        let _ = params.bool(name);
        if let Ok(Some(_)) = params.json(name) {
            assert!(text.is_some());
        }
        if let Ok(Some(list)) = params.string_list(name, 8) {
            assert!(list.len() <= 8, "the bound holds");
        }
    }
}
