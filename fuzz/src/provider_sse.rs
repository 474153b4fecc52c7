//! `provider_sse`: a provider's 2xx response body, cut into chunks (see [`crate::Chunked`]; flag bit 0 picks
//! the Anthropic wire format over OpenAI's), through the real SSE reader and the adapter's event parser.
//! Checked: no panic; the cut does not change the events; the stream ends after `Done` or after one error,
//! and `Done` is last.

use confab_llm::StreamEvent;
use confab_llm::fuzz::parse_sse;

use crate::Chunked;

pub fn run(data: &[u8]) {
    let input = Chunked::parse(data);
    let anthropic = input.flags & 1 == 1;
    let whole = parse_sse(anthropic, vec![input.body.to_vec()]);
    let cut = parse_sse(anthropic, input.chunks.iter().map(|c| c.to_vec()).collect());
    assert_eq!(whole, cut, "the same events whole and in chunks");
    for (i, ev) in whole.iter().enumerate() {
        let last = i + 1 == whole.len();
        if matches!(ev, Err(_) | Ok(StreamEvent::Done { .. })) {
            assert!(last, "the stream ends after Done or an error: {whole:?}");
        }
    }
    assert!(
        matches!(whole.last(), Some(Err(_) | Ok(StreamEvent::Done { .. }))),
        "a stream always ends in Done or an error: {whole:?}"
    );
}
