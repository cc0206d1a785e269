//! ACK latency of a receiver task over a real pty: from writing a frame's DC4 to reading its
//! ACK, at a burst of 200 frames/s, through `alarms::receiver::run` opening the pty by its path.
//! Prints p50 / p99 / max; the target is p99 < 20 ms (the receiver waits 4 s). A plain
//! `fn main` (`harness = false`): it measures a latency distribution of a real-time loop, which
//! criterion's throughput statistics do not fit. It must not need root, socat or a serial port.
//!
//! Run: `cargo bench --bench serial_ack` (optional argument: number of frames, default 2000).

use std::error::Error;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use callguard::alarms::receiver::{ReceiverSettings, ReceiverStatus, run};
use callguard::clock::SystemClock;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_serial::SerialStream;
use tokio_util::sync::CancellationToken;

const ACK: u8 = 0x06;
const DC4: u8 = 0x14;
const RATE_PER_SECOND: u64 = 200;
const WARM_UP: usize = 20;

fn main() -> Result<(), Box<dyn Error>> {
    let n_frames = match std::env::args().nth(1).map(|arg| arg.parse::<usize>()) {
        Some(Ok(n)) if n > 0 => n,
        _ => 2000,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut latencies = runtime.block_on(measure(n_frames))?;
    latencies.sort_unstable();
    let at = |percent: usize| latencies[(latencies.len() * percent / 100).min(latencies.len() - 1)];
    let max = latencies[latencies.len() - 1];
    println!(
        "serial_ack: {} frames at {RATE_PER_SECOND}/s over a pty: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms (target p99 < 20 ms)",
        latencies.len(),
        millis(at(50)),
        millis(at(99)),
        millis(max),
    );
    Ok(())
}

async fn measure(n_frames: usize) -> Result<Vec<Duration>, Box<dyn Error>> {
    let (mut panel, slave) = SerialStream::pair()?;
    let device = match tokio_serial::SerialPort::name(&slave) {
        Some(name) => PathBuf::from(name),
        None => return Err("the pty has no name".into()),
    };
    let settings = ReceiverSettings::new("bench", device);
    let (events_tx, mut events_rx) = mpsc::channel(1024);
    let status = Arc::new(ReceiverStatus::new("bench"));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run(
        settings,
        events_tx,
        status.clone(),
        Arc::new(SystemClock),
        shutdown.clone(),
    ));
    let drain = tokio::spawn(async move { while events_rx.recv().await.is_some() {} });

    let mut ticks = tokio::time::interval(Duration::from_micros(1_000_000 / RATE_PER_SECOND));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut latencies = Vec::with_capacity(n_frames);
    for index in 0..WARM_UP + n_frames {
        ticks.tick().await;
        // Distinct frames (zone and group vary), so none is a duplicate.
        let body = format!(
            "5011 181234E130{:02}{:03}",
            (index / 1000) % 100,
            index % 1000
        );
        AsyncWriteExt::write_all(&mut panel, body.as_bytes()).await?;
        let written = Instant::now();
        AsyncWriteExt::write_all(&mut panel, &[DC4]).await?;
        let mut answer = [0u8; 1];
        tokio::time::timeout(
            Duration::from_secs(10),
            AsyncReadExt::read_exact(&mut panel, &mut answer),
        )
        .await??;
        let latency = written.elapsed();
        if answer != [ACK] {
            return Err(format!("frame {index}: answer {answer:?}, expected ACK").into());
        }
        if index >= WARM_UP {
            latencies.push(latency);
        }
    }
    shutdown.cancel();
    task.await?;
    drain.await?;
    let counts = status.snapshot().counts;
    eprintln!(
        "receiver counts: acked {}, nacked {}, events {}, duplicates {}",
        counts.acked, counts.nacked, counts.events, counts.duplicates
    );
    drop(slave);
    Ok(latencies)
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}
