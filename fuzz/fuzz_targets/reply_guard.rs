#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| confab_fuzz::reply_guard::run(data));
