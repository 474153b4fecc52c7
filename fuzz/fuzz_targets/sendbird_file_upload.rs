#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| confab_fuzz::sendbird_file_upload::run(data));
