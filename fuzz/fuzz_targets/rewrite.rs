#![no_main]
//! The streaming link rewriters: any body, cut anywhere, equals the whole rewrite.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else { return };
    let cuts_len = (n as usize % 8).min(rest.len());
    let (cuts, body) = rest.split_at(cuts_len);
    let mut cuts: Vec<usize> = cuts.iter().map(|&c| c as usize * body.len() / 256).collect();
    cuts.sort_unstable();
    let (streamed, whole) = tokenproxy::fuzzing::rewrite(body, &cuts);
    assert_eq!(streamed, whole);
    for (streamed, whole) in tokenproxy::fuzzing::paging(body, &cuts) {
        assert_eq!(streamed, whole);
    }
});
