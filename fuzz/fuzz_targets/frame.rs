//! The peer frame decoder: any bytes end in frames or an error, never a panic or a large
//! allocation (the limit is checked before the payload is allocated).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let mut input = data;
        while tandem::cluster::frame::read(&mut input, 1 << 20)
            .await
            .is_ok()
        {}
    });
});
