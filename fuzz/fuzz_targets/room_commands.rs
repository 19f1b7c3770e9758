#![no_main]
//! Any space options, then any sequence of API commands from any
//! participants; see `amphi_fuzz::room` for the properties checked.
use amphi_fuzz::room::{Input, run};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: Input| {
    run(input);
});
