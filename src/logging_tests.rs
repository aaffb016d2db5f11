//! Unit tests of `crate::logging`.

use super::*;

#[test]
fn the_request_line_is_what_tracing_would_write() {
    let lines = [
        RequestLine {
            level: tracing::Level::INFO,
            method: "GET",
            route: "hubspot",
            caller: None,
            status: 200,
            duration_ms: 1.234,
            retried: false,
            error: None,
        },
        RequestLine {
            level: tracing::Level::WARN,
            method: "POST",
            route: "a \"quoted\" name",
            caller: Some("adf"),
            status: 502,
            duration_ms: 30000.0,
            retried: true,
            error: Some("upstream_failed"),
        },
        RequestLine {
            level: tracing::Level::ERROR,
            method: "PATCH",
            route: "none",
            caller: None,
            status: 500,
            duration_ms: 0.001,
            retried: false,
            error: Some("internal"),
        },
    ];
    for line in &lines {
        let sink = Sink::default();
        let out = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || out.clone())
            .with_ansi(false)
            .without_time()
            .with_max_level(tracing::Level::TRACE)
            .finish();
        tracing::subscriber::with_default(subscriber, || RequestLog::tracing().write(line));
        let theirs = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let mut ours = String::new();
        format_request_line(&mut ours, line);
        assert_eq!(ours, theirs);
    }
}

#[test]
fn the_timestamp_is_what_tracing_would_write() {
    use tracing_subscriber::fmt::time::FormatTime;
    // tracing-subscriber's clock reads the time itself: compare the shape, and
    // the digits on a fixed instant.
    let mut theirs = String::new();
    tracing_subscriber::fmt::time::SystemTime
        .format_time(&mut tracing_subscriber::fmt::format::Writer::new(
            &mut theirs,
        ))
        .unwrap();
    let mut ours = String::new();
    timestamp(&mut ours, time::OffsetDateTime::now_utc());
    assert_eq!(ours.len(), theirs.len() + 1, "{ours} / {theirs}");
    let shape = |t: &str| {
        t.bytes()
            .map(|b| if b.is_ascii_digit() { b'9' } else { b })
            .collect::<Vec<u8>>()
    };
    assert_eq!(shape(&ours[..ours.len() - 1]), shape(&theirs));
    let mut fixed = String::new();
    let instant = time::Date::from_calendar_date(2026, time::Month::March, 4)
        .unwrap()
        .with_hms_micro(5, 6, 7, 89_012)
        .unwrap()
        .assume_utc();
    timestamp(&mut fixed, instant);
    assert_eq!(fixed, "2026-03-04T05:06:07.089012Z ");
}

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn every_line_arrives_in_order_and_the_guard_writes_the_rest() {
    let sink = Sink::default();
    let (writer, guard) = batched(sink.clone());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let mut w = writer.clone();
            std::thread::spawn(move || {
                for i in 0..20_000 {
                    w.write_all(format!("{t} {i}\n").as_bytes()).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    drop(guard);
    let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
    let mut next = [0u32; 4];
    for line in text.lines() {
        let (t, i) = line.split_once(' ').unwrap();
        let t: usize = t.parse().unwrap();
        assert_eq!(
            i.parse::<u32>().unwrap(),
            next[t],
            "thread {t}'s lines in order"
        );
        next[t] += 1;
    }
    assert_eq!(next, [20_000; 4], "none lost");
}

#[test]
fn a_single_line_is_written_without_waiting_for_more() {
    let sink = Sink::default();
    let (mut writer, _guard) = batched(sink.clone());
    writer.write_all(b"one line\n").unwrap();
    let start = Instant::now();
    while sink.0.lock().unwrap().is_empty() {
        assert!(start.elapsed() < Duration::from_secs(10), "never written");
        std::thread::yield_now();
    }
    assert_eq!(&*sink.0.lock().unwrap(), b"one line\n");
}
