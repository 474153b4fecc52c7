//! `sendbird_send_stream`: the incremental parser of Sendbird's `send_stream` body (`JsonSplitter`), fed the
//! input whole and cut into chunks (see [`crate::Chunked`]). Checked: no panic; the cut does not change what
//! is parsed (the same values, the same error or none, the same unfinished rest at the end); a value never
//! holds more than the bound while unfinished.

use confab_api_sendbird::bots::JsonSplitter;
use serde_json::Value;

use crate::Chunked;

/// Bound on one unfinished value (small, so inputs reach it).
const MAX: usize = 512;

/// Values until the first error, the error, and whether an unfinished value is left.
fn feed(chunks: &[&[u8]]) -> (Vec<Value>, Option<String>, bool) {
    let mut s = JsonSplitter::default();
    let mut values = Vec::new();
    for c in chunks {
        match s.push(c, MAX) {
            Ok(v) => values.extend(v),
            Err(e) => return (values, Some(e), s.has_partial()),
        }
    }
    let partial = s.has_partial();
    (values, None, partial)
}

pub fn run(data: &[u8]) {
    let input = Chunked::parse(data);
    let (whole, whole_err, whole_partial) = feed(&[input.body]);
    let (cut, cut_err, cut_partial) = feed(&input.chunks);
    let too_large = |e: &Option<String>| e.as_deref().is_some_and(|e| e.contains("exceeds"));
    if whole_err.is_none() && cut_err.is_none() {
        assert_eq!(whole, cut, "the same values whole and in chunks");
        assert_eq!(whole_partial, cut_partial, "the same unfinished rest");
        return;
    }
    // An error drops the values of the push that met it, so only a common prefix is compared; its text names
    // a place in the buffer, which depends on the cut. The bound is on what is buffered, which depends on the
    // cut too; any other error happens however the body is cut.
    let n = whole.len().min(cut.len());
    assert_eq!(whole[..n], cut[..n], "the same values before the error");
    if !too_large(&whole_err) && !too_large(&cut_err) {
        assert!(
            whole_err.is_some() && cut_err.is_some(),
            "an error only one way: whole {whole_err:?}, in chunks {cut_err:?}"
        );
    }
}
