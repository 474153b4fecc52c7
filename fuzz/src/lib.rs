//! The fuzz targets' logic, one module per target (`fuzz_targets/*.rs` only call `run`). Each drives Confab's
//! own parsing code with untrusted bytes and checks what it can beyond "no panic". Seeds are under
//! `corpus/<target>/`; `scripts/fuzz.sh` builds and runs every target.

pub mod fixture;
pub mod moderation_rules;
pub mod multipart_upload;
pub mod nim_params;
pub mod provider_sse;
pub mod reply_guard;
pub mod sendbird_file_upload;
pub mod sendbird_send_stream;
pub mod ws_session;

/// An input that is a body cut into chunks: byte 0 holds the number of cuts (low 3 bits) and a few flags for the
/// target (the other bits), then one byte per cut (its place, as a fraction of the body), then the body.
pub struct Chunked<'a> {
    pub flags: u8,
    pub body: &'a [u8],
    pub chunks: Vec<&'a [u8]>,
}

impl<'a> Chunked<'a> {
    pub fn parse(data: &'a [u8]) -> Chunked<'a> {
        let Some((&head, rest)) = data.split_first() else {
            return Chunked {
                flags: 0,
                body: data,
                chunks: Vec::new(),
            };
        };
        let cuts = ((head & 7) as usize).min(rest.len());
        let (places, body) = rest.split_at(cuts);
        let mut at: Vec<usize> = places.iter().map(|&p| p as usize * body.len() / 256).collect();
        at.sort_unstable();
        let mut chunks = Vec::with_capacity(cuts + 1);
        let mut start = 0;
        for end in at.into_iter().chain([body.len()]) {
            chunks.push(&body[start..end]);
            start = end;
        }
        Chunked {
            flags: head >> 3,
            body,
            chunks,
        }
    }
}
