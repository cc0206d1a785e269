//! Recording ingest and retrieval over HTTPS (SPEC §5.1, §5.3, §6 recording endpoints), through
//! the real server: every audio format in, the original bytes (whole and by Range) and 16-bit
//! WAV playback out; bad uploads refused with nothing stored; idempotent call ids; the size
//! limit and abandoned uploads; roles, purposes, masking and the audit of every read; and no
//! plaintext audio, number or call id anywhere under the data directory.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::support::audio::{self, Mp3Tags, TestAudio, WavEncoding};
use crate::support::client::{Client, Multipart, Response};
use crate::support::{Setup, files_under, is_vault_temporary};

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Every wait in these tests: generous, and a poll, never a fixed sleep.
pub(crate) const PATIENCE: Duration = Duration::from_secs(30);

/// The caller used throughout, and every written form it could leak in.
pub(crate) const CALLER_FORMS: [&str; 4] = [
    "0612345678",
    "+33612345678",
    "33612345678",
    "06 12 34 56 78",
];
pub(crate) const CALLEE: &str = "+33145678900";
pub(crate) const CALLEE_FORMS: [&str; 3] = ["0145678900", "+33145678900", "01 45 67 89 00"];

/// Awaits an HTTP exchange, failing the test if it errs or takes longer than `PATIENCE`.
pub(crate) async fn ok(
    what: &str,
    exchange: impl Future<Output = Result<Response, String>>,
) -> Response {
    match tokio::time::timeout(PATIENCE * 2, exchange).await {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => panic!("{what}: {error}"),
        Err(_) => panic!("{what}: no answer within {:?}", PATIENCE * 2),
    }
}

/// Polls `check` until it holds, for up to `PATIENCE`.
pub(crate) async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still not true after {PATIENCE:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A call start one hour ago, RFC 3339 to the second (retention runs for six months from it).
// The server under test runs on the wall clock, so the test must too.
#[allow(clippy::disallowed_methods)]
pub(crate) fn started_at() -> String {
    jiff::Timestamp::now()
        .checked_sub(jiff::SignedDuration::from_hours(1))
        .unwrap()
        .round(jiff::Unit::Second)
        .unwrap()
        .to_string()
}

/// SPEC §5.1 metadata for `call_id` from `caller`.
pub(crate) fn metadata(call_id: &str, caller: &str) -> Value {
    json!({
        "call_id": call_id,
        "started_at": started_at(),
        "direction": "inbound",
        "caller": caller,
        "callee": CALLEE,
        "account": "ACC-0042",
        "operator": "op-7",
        "alarm_case": null,
    })
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A 16-bit PCM WAV of a `freq` Hz tone (distinct content per call), 8 kHz mono.
pub(crate) fn tone_wav(freq: f64, seconds: f64) -> Vec<u8> {
    let n = (8000.0 * seconds) as usize;
    let samples: Vec<f64> = (0..n)
        .map(|i| 0.5 * (2.0 * std::f64::consts::PI * freq * i as f64 / 8000.0).sin())
        .collect();
    audio::wav_bytes(WavEncoding::Pcm16, 8000, 1, &samples)
}

/// 64 bytes of `bytes` starting near `fraction` of its length, moved on until they are not a
/// trivially repetitive run (which could occur anywhere by chance).
pub(crate) fn plaintext_window(bytes: &[u8], fraction: f64) -> Vec<u8> {
    assert!(bytes.len() >= 128, "file too small for a window");
    let mut start = ((bytes.len() as f64 * fraction) as usize).min(bytes.len() - 64);
    loop {
        let window = &bytes[start..start + 64];
        let mut seen = [false; 256];
        window.iter().for_each(|&b| seen[usize::from(b)] = true);
        if seen.iter().filter(|&&s| s).count() >= 12 || start + 128 > bytes.len() {
            return window.to_vec();
        }
        start += 64;
    }
}

/// Which `(label, needle)` occur in which file under `dir`: one pass per file, dispatching on
/// each needle's first byte (fast enough in a debug build).
pub(crate) fn secrets_on_disk(dir: &Path, needles: &[(String, Vec<u8>)]) -> Vec<String> {
    let mut by_first: Vec<Vec<usize>> = vec![Vec::new(); 256];
    for (index, (_, needle)) in needles.iter().enumerate() {
        assert!(!needle.is_empty());
        by_first[usize::from(needle[0])].push(index);
    }
    let mut found = Vec::new();
    for path in files_under(dir) {
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let mut hit = vec![false; needles.len()];
        for (at, &byte) in bytes.iter().enumerate() {
            for &index in &by_first[usize::from(byte)] {
                if !hit[index] && bytes[at..].starts_with(&needles[index].1) {
                    hit[index] = true;
                }
            }
        }
        for (index, hit) in hit.into_iter().enumerate() {
            if hit {
                found.push(format!("{} in {}", needles[index].0, path.display()));
            }
        }
    }
    found
}

/// The SPEC §4.1 check: no plaintext audio window, no caller or callee number in any form and
/// no call id in any file under the data directory.
pub(crate) fn assert_no_plaintext(
    data: &Path,
    audio_files: &[(String, Vec<u8>)],
    call_ids: &[String],
) {
    let mut needles: Vec<(String, Vec<u8>)> = Vec::new();
    for (name, bytes) in audio_files {
        needles.push((
            format!("audio window of {name}"),
            plaintext_window(bytes, 0.5),
        ));
        needles.push((
            format!("audio window (first quarter) of {name}"),
            plaintext_window(bytes, 0.25),
        ));
    }
    for form in CALLER_FORMS.iter().chain(&CALLEE_FORMS) {
        needles.push((format!("number {form:?}"), form.as_bytes().to_vec()));
    }
    for call_id in call_ids {
        needles.push((format!("call id {call_id:?}"), call_id.as_bytes().to_vec()));
    }
    let found = secrets_on_disk(data, &needles);
    assert!(found.is_empty(), "plaintext at rest: {found:#?}");
}

/// What the vault holds: recording blobs (committed, or being written: a blob without a
/// catalog row), temporary files (none since blobs are written in place), quarantined blobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct VaultFiles {
    pub(crate) blobs: usize,
    pub(crate) temp: usize,
    pub(crate) quarantine: usize,
}

pub(crate) fn vault_files(data: &Path) -> VaultFiles {
    let vault = data.join("vault");
    let quarantine = vault.join("quarantine");
    let mut out = VaultFiles {
        blobs: 0,
        temp: 0,
        quarantine: 0,
    };
    for path in files_under(&vault) {
        if is_vault_temporary(&path) {
            out.temp += 1;
        } else if path.starts_with(&quarantine) {
            out.quarantine += 1;
        } else {
            out.blobs += 1;
        }
    }
    out
}

/// Temporary files in the vault (`*.tmp`: earlier versions wrote blobs under such a name and
/// renamed them; none must ever be left).
pub(crate) fn temp_files(data: &Path) -> Vec<PathBuf> {
    files_under(&data.join("vault"))
        .into_iter()
        .filter(|path| is_vault_temporary(path))
        .collect()
}

/// `GET /v1/status` counts.
pub(crate) async fn counts(client: &Client) -> Value {
    let response = ok("status", client.get("/v1/status")).await;
    assert_eq!(response.status, 200, "{:?}", response.body);
    response.json()["counts"].clone()
}

pub(crate) async fn recording_count(client: &Client) -> u64 {
    counts(client).await["recordings"]
        .as_u64()
        .expect("counts.recordings")
}

/// The recordings listed for `call_id` (as `client`, which must be allowed to list).
pub(crate) async fn listed(client: &Client, call_id: &str) -> Vec<Value> {
    let path = format!("/v1/recordings?call_id={}", query_escape(call_id));
    let response = ok("list by call id", client.get(&path)).await;
    assert_eq!(response.status, 200, "{path}: {:?}", response.body);
    response.json()["items"].as_array().unwrap().clone()
}

/// Percent-encodes a query value.
pub(crate) fn query_escape(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(byte))
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

fn audio_path(id: &str, purpose: &str) -> String {
    format!("/v1/recordings/{id}/audio?purpose={purpose}")
}

async fn get_with(client: &Client, path: &str, headers: &[(&str, &str)]) -> Response {
    ok(
        path,
        client.send(hyper::Method::GET, path, headers, bytes::Bytes::new()),
    )
    .await
}

fn header(response: &Response, name: &str) -> String {
    response
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// De-interleaves channel `channel` of `samples`.
fn channel_of(samples: &[i16], channels: u16, channel: u16) -> Vec<i16> {
    samples
        .iter()
        .skip(usize::from(channel))
        .step_by(usize::from(channels))
        .copied()
        .collect()
}

struct FormatCase {
    name: &'static str,
    audio: TestAudio,
    container: &'static str,
    codec: &'static str,
}

fn format_matrix(dir: &Path) -> Vec<FormatCase> {
    let case = |name, audio, container, codec| FormatCase {
        name,
        audio,
        container,
        codec,
    };
    vec![
        case(
            "wav-pcm8",
            audio::wav_sine(dir, WavEncoding::Pcm8, 8000, 1, 1.5),
            "wav",
            "pcm_u8",
        ),
        case(
            "wav-pcm16",
            audio::wav_sine(dir, WavEncoding::Pcm16, 16000, 2, 1.0),
            "wav",
            "pcm_s16le",
        ),
        case(
            "wav-pcm24",
            audio::wav_sine(dir, WavEncoding::Pcm24, 44100, 1, 1.0),
            "wav",
            "pcm_s24le",
        ),
        case(
            "wav-pcm32",
            audio::wav_sine(dir, WavEncoding::Pcm32, 8000, 2, 1.0),
            "wav",
            "pcm_s32le",
        ),
        case(
            "wav-float",
            audio::wav_sine(dir, WavEncoding::Float32, 22050, 1, 1.0),
            "wav",
            "pcm_f32le",
        ),
        case(
            "wav-alaw",
            audio::wav_sine(dir, WavEncoding::Alaw, 8000, 1, 2.0),
            "wav",
            "pcm_alaw",
        ),
        case(
            "wav-mulaw",
            audio::wav_sine(dir, WavEncoding::Mulaw, 8000, 2, 1.0),
            "wav",
            "pcm_mulaw",
        ),
        case(
            "wav-ima-adpcm",
            audio::wav_ima_adpcm(dir, 8000, 1, 1.5),
            "wav",
            "adpcm_ima",
        ),
        case(
            "wav-ms-adpcm",
            audio::wav_ms_adpcm(dir, 16000, 2, 1.0),
            "wav",
            "adpcm_ms",
        ),
        case("flac", audio::flac(dir, 16000, 1, 1.5), "flac", "flac"),
        case(
            "mp3",
            audio::mp3(dir, 16000, 1, 1.5, Mp3Tags::LameInfo),
            "mp3",
            "mp3",
        ),
        case(
            "ogg-vorbis",
            audio::ogg_vorbis(dir, 16000, 2, 1.5),
            "ogg",
            "vorbis",
        ),
        case("ulaw", audio::ulaw(dir, 1.5), "raw", "pcm_mulaw"),
        case("alaw", audio::alaw(dir, 1.0), "raw", "pcm_alaw"),
        case("sln", audio::sln(dir, 1.0), "raw", "pcm_s16le"),
        case("wav49-gsm", audio::gsm_wav(dir, 1.5), "wav", "gsm"),
        case("raw-gsm", audio::gsm_raw(dir, 1.0), "raw", "gsm"),
        case(
            "ogg-opus",
            audio::ogg_opus(dir, 16000, 1, 1.5),
            "ogg",
            "opus",
        ),
    ]
}

/// A unique prefix for the call ids of one test, so that they can be searched for on disk.
fn call_prefix(test: &str) -> String {
    format!("CG-{test}-{:x}", std::process::id())
}

#[test]
fn every_format_is_stored_as_sent_and_served_whole_by_range_and_as_wav() {
    let audio_dir = tempfile::tempdir().unwrap();
    let cases = format_matrix(audio_dir.path());
    let instance = Setup::new("").start();
    let prefix = call_prefix("fmt");
    let caller_inputs = [
        "0612345678",
        "+33612345678",
        "06 12 34 56 78",
        "0033612345678",
        "+33 6 12 34 56 78",
    ];
    runtime().block_on(async {
        let recorder = instance.client("recorder");
        let supervisor = instance.client("supervisor");
        let dpo = instance.client("dpo");
        let mut uploaded: Vec<(String, Vec<u8>)> = Vec::new();
        let mut call_ids = Vec::new();
        let mut reads: Vec<(String, usize)> = Vec::new();
        for (index, case) in cases.iter().enumerate() {
            let name = case.name;
            let bytes = case.audio.bytes();
            let len = bytes.len();
            let file_name = format!("recording.{}", case.audio.extension());
            let call_id = format!("{prefix}-{name}");
            let caller = caller_inputs[index % caller_inputs.len()];

            // Upload: 201 with the facts of the audio.
            let response = ok(
                name,
                recorder.upload(&metadata(&call_id, caller), &file_name, &bytes),
            )
            .await;
            assert_eq!(
                response.status,
                201,
                "{name}: {}",
                String::from_utf8_lossy(&response.body)
            );
            let body = response.json();
            assert_eq!(body["status"], "stored", "{name}: {body}");
            assert_eq!(body["codec"], case.codec, "{name}: {body}");
            assert_eq!(body["container"], case.container, "{name}: {body}");
            assert_eq!(body["sample_rate"], case.audio.sample_rate, "{name}: {body}");
            assert_eq!(body["channels"], case.audio.channels, "{name}: {body}");
            let duration = body["duration_ms"].as_u64().expect("duration_ms");
            assert!(
                duration.abs_diff(case.audio.duration_ms()) <= 100,
                "{name}: duration {duration} ms, truth {} ms",
                case.audio.duration_ms()
            );
            assert_eq!(body["sha256"], sha256_hex(&bytes), "{name}: {body}");
            assert!(body["retain_until"].is_string(), "{name}: {body}");
            let id = body["id"].as_str().expect("id").to_owned();

            // Metadata: the number is normalised whatever way it was written.
            let meta = ok(name, dpo.get(&format!("/v1/recordings/{id}"))).await;
            assert_eq!(meta.status, 200, "{name}: {:?}", meta.body);
            let meta = meta.json();
            assert_eq!(meta["caller"], "+33612345678", "{name} sent as {caller:?}");
            assert_eq!(meta["call_id"], call_id.as_str());
            assert_eq!(meta["sha256"], sha256_hex(&bytes));

            // The original, exactly.
            let whole = get_with(&supervisor, &audio_path(&id, "quality_review"), &[]).await;
            assert_eq!(whole.status, 200, "{name}: {:?}", whole.body);
            assert!(whole.body[..] == bytes[..], "{name}: the original bytes differ");
            let disposition = header(&whole, "content-disposition");
            assert!(
                disposition.starts_with(&format!("inline; filename=\"{id}.")),
                "{name}: {disposition}"
            );
            if case.codec == "pcm_mulaw" && case.container == "raw" {
                assert_eq!(header(&whole, "content-type"), "audio/basic", "{name}");
            }
            let mut n_reads = 1;

            // Ranges.
            let ranges = [
                ("bytes=0-0".to_owned(), 0, 0),
                ("bytes=10-99".to_owned(), 10, 99),
                ("bytes=-5".to_owned(), len - 5, len - 1),
                (format!("bytes={}-", len / 3), len / 3, len - 1),
            ];
            for (range, start, end) in &ranges {
                let part = get_with(
                    &supervisor,
                    &audio_path(&id, "quality_review"),
                    &[("range", range)],
                )
                .await;
                assert_eq!(part.status, 206, "{name} {range}: {:?}", part.body);
                assert!(
                    part.body[..] == bytes[*start..=*end],
                    "{name} {range}: got {} bytes, not bytes {start}-{end}",
                    part.body.len()
                );
                assert_eq!(
                    header(&part, "content-range"),
                    format!("bytes {start}-{end}/{len}"),
                    "{name} {range}"
                );
                n_reads += 1;
            }
            let beyond = get_with(
                &supervisor,
                &audio_path(&id, "quality_review"),
                &[("range", &format!("bytes={len}-"))],
            )
            .await;
            assert_eq!(beyond.status, 416, "{name}: a range past the end");
            assert_eq!(header(&beyond, "content-range"), format!("bytes */{len}"), "{name}");
            // Ignored, as RFC 9110 says: another unit, a malformed range, several ranges.
            for range in ["items=0-5", "bytes=50-10", "bytes=0-1,5-6"] {
                let whole = get_with(
                    &supervisor,
                    &audio_path(&id, "quality_review"),
                    &[("range", range)],
                )
                .await;
                assert_eq!(whole.status, 200, "{name} {range}");
                assert!(whole.body[..] == bytes[..], "{name} {range}: not the whole file");
                n_reads += 1;
            }

            // Playback: 16-bit PCM WAV, or 415 for Opus with the original still served.
            let wav = get_with(
                &supervisor,
                &format!("{}&format=wav", audio_path(&id, "quality_review")),
                &[],
            )
            .await;
            if case.codec == "opus" {
                assert_eq!(wav.status, 415, "{name}: {:?}", wav.body);
                assert_eq!(wav.code(), "transcoding_unavailable", "{name}");
            } else {
                assert_eq!(wav.status, 200, "{name}: {:?}", wav.body);
                n_reads += 1;
                // A player seeking: a range of the WAV is exactly those bytes of it.
                let seek = get_with(
                    &supervisor,
                    &format!("{}&format=wav", audio_path(&id, "quality_review")),
                    &[("range", "bytes=100-4195")],
                )
                .await;
                assert_eq!(seek.status, 206, "{name}: {:?}", seek.body);
                n_reads += 1;
                let wav_len = wav.body.len();
                let last = 4195.min(wav_len - 1);
                assert!(seek.body[..] == wav.body[100..=last], "{name}: WAV range");
                assert_eq!(
                    header(&seek, "content-range"),
                    format!("bytes 100-{last}/{wav_len}"),
                    "{name}"
                );
                let parsed = audio::parse_pcm16_wav(&wav.body)
                    .unwrap_or_else(|why| panic!("{name}: format=wav is not a PCM16 WAV: {why}"));
                assert_eq!(parsed.sample_rate, case.audio.sample_rate, "{name}");
                assert_eq!(parsed.channels, case.audio.channels, "{name}");
                let channels = usize::from(parsed.channels);
                assert_eq!(parsed.samples.len() % channels, 0, "{name}");
                let n_frames = (parsed.samples.len() / channels) as u64;
                assert_eq!(
                    wav.body.len() as u64 - 44,
                    n_frames * channels as u64 * 2,
                    "{name}"
                );
                let decoded_ms = n_frames * 1000 / u64::from(parsed.sample_rate);
                assert!(
                    decoded_ms.abs_diff(case.audio.duration_ms()) <= 100,
                    "{name}: wav lasts {decoded_ms} ms, truth {} ms",
                    case.audio.duration_ms()
                );
                // And it is the tone that was recorded on each channel, not noise or silence.
                let source = audio::sine_i16(
                    case.audio.sample_rate,
                    case.audio.channels,
                    case.audio.n_frames,
                );
                let rate = case.audio.sample_rate as usize;
                let mid = (n_frames as usize).min(case.audio.n_frames as usize) / 2 - rate / 20;
                for channel in 0..parsed.channels {
                    let reference = channel_of(&source, parsed.channels, channel);
                    let decoded = channel_of(&parsed.samples, parsed.channels, channel);
                    let max_lag = rate / 440 + 2;
                    let (correlation, _) = audio::best_lag_correlation(
                        &reference[mid..mid + rate / 20],
                        &decoded[mid..mid + rate / 20 + max_lag],
                        max_lag,
                    );
                    assert!(
                        correlation > 0.9,
                        "{name} channel {channel}: playback correlates {correlation:.3} with the source"
                    );
                }
            }
            reads.push((id, n_reads));
            uploaded.push((name.to_owned(), bytes));
            call_ids.push(call_id);
        }
        assert_eq!(recording_count(&dpo).await, cases.len() as u64);

        // Every read is in the audit, with its purpose.
        let audit = ok(
            "audit",
            dpo.get("/v1/audit?action=recording.read_audio&limit=1000"),
        )
        .await;
        assert_eq!(audit.status, 200, "{:?}", audit.body);
        let entries = audit.json()["items"].as_array().unwrap().clone();
        for (id, n_reads) in &reads {
            let mine: Vec<&Value> = entries
                .iter()
                .filter(|e| e["object"] == id.as_str() && e["outcome"] == "allowed")
                .collect();
            assert_eq!(mine.len(), *n_reads, "audit entries of {id}: {mine:#?}");
            for entry in mine {
                assert_eq!(entry["purpose"], "quality_review", "{entry}");
                assert_eq!(entry["actor"], "supervisor", "{entry}");
            }
        }

        assert_eq!(vault_files(&instance.setup.data).temp, 0);
        assert_no_plaintext(&instance.setup.data, &uploaded, &call_ids);
    });
}

/// One refused upload and what it must answer.
struct BadUpload {
    what: &'static str,
    call_id: String,
    form: Multipart,
    status: u16,
    codes: &'static [&'static str],
}

#[test]
fn bad_uploads_get_the_documented_error_and_store_nothing() {
    let instance = Setup::new("").start();
    let prefix = call_prefix("bad");
    let good = tone_wav(440.0, 1.0);
    // Deterministic noise whose first bytes are no known signature.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut noise: Vec<u8> = (0..6000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    noise[..4].copy_from_slice(b"\x00\x01\x02\x03");
    runtime().block_on(async {
        let recorder = instance.client("recorder");
        let dpo = instance.client("dpo");
        let data = instance.setup.data.clone();

        // A stored recording first, so that "unchanged" is not trivially "empty".
        let first = format!("{prefix}-ok");
        let response = ok(
            "good upload",
            recorder.upload(&metadata(&first, "0612345678"), "good.wav", &good),
        )
        .await;
        assert_eq!(response.status, 201, "{:?}", response.body);
        let before = vault_files(&data);
        assert_eq!((before.blobs, before.temp), (1, 0));

        let call = |n: &str| format!("{prefix}-{n}");
        let meta = |call_id: &str| metadata(call_id, "0612345678");
        let with = |call_id: &str, edit: &dyn Fn(&mut Value)| {
            let mut value = meta(call_id);
            edit(&mut value);
            value
        };
        const AUDIO: &[&str] = &["unsupported_audio"];
        const META: &[&str] = &["invalid_metadata"];
        let cases = vec![
            BadUpload {
                what: "random bytes named .wav",
                call_id: call("noise"),
                form: Multipart::new()
                    .json("metadata", &meta(&call("noise")))
                    .file("audio", "noise.wav", &noise),
                status: 422,
                codes: AUDIO,
            },
            BadUpload {
                what: "a WAV cut inside its header",
                call_id: call("truncated"),
                form: Multipart::new()
                    .json("metadata", &meta(&call("truncated")))
                    .file("audio", "cut.wav", &good[..30]),
                status: 422,
                codes: AUDIO,
            },
            BadUpload {
                what: "an empty file",
                call_id: call("empty"),
                form: Multipart::new()
                    .json("metadata", &meta(&call("empty")))
                    .file("audio", "empty.wav", b""),
                status: 422,
                codes: AUDIO,
            },
            BadUpload {
                what: "a WAV named .ulaw",
                call_id: call("ext"),
                form: Multipart::new().json("metadata", &meta(&call("ext"))).file(
                    "audio",
                    "call.ulaw",
                    &good,
                ),
                status: 422,
                codes: AUDIO,
            },
            BadUpload {
                what: "metadata without call_id",
                call_id: call("nocallid"),
                form: Multipart::new()
                    .json(
                        "metadata",
                        &with(&call("nocallid"), &|v| {
                            v.as_object_mut().unwrap().remove("call_id");
                        }),
                    )
                    .file("audio", "good.wav", &good),
                status: 422,
                codes: META,
            },
            BadUpload {
                what: "a started_at that is not RFC 3339",
                call_id: call("baddate"),
                form: Multipart::new()
                    .json(
                        "metadata",
                        &with(&call("baddate"), &|v| {
                            v["started_at"] = json!("22/11/2026 10:15")
                        }),
                    )
                    .file("audio", "good.wav", &good),
                status: 422,
                codes: META,
            },
            BadUpload {
                what: "an unknown metadata field",
                call_id: call("unknown"),
                form: Multipart::new()
                    .json(
                        "metadata",
                        &with(&call("unknown"), &|v| v["colour"] = json!("blue")),
                    )
                    .file("audio", "good.wav", &good),
                status: 422,
                codes: META,
            },
            BadUpload {
                what: "a caller that is not a phone number",
                call_id: call("badnumber"),
                form: Multipart::new()
                    .json(
                        "metadata",
                        &with(&call("badnumber"), &|v| v["caller"] = json!("12345")),
                    )
                    .file("audio", "good.wav", &good),
                status: 422,
                codes: META,
            },
            BadUpload {
                what: "no metadata part",
                call_id: call("nometa"),
                form: Multipart::new().file("audio", "good.wav", &good),
                status: 422,
                codes: META,
            },
            BadUpload {
                what: "the audio part first",
                call_id: call("swapped"),
                form: Multipart::new()
                    .file("audio", "good.wav", &good)
                    .json("metadata", &meta(&call("swapped"))),
                status: 422,
                codes: META,
            },
            // multer holds what precedes a part's data until it ends: bounded, whatever comes.
            BadUpload {
                what: "3 MiB of preamble before the first part",
                call_id: call("preamble"),
                form: Multipart::new()
                    .raw(&vec![b'x'; 3 << 20])
                    .raw(b"\r\n")
                    .json("metadata", &meta(&call("preamble")))
                    .file("audio", "good.wav", &good),
                status: 400,
                codes: &["bad_request"],
            },
            BadUpload {
                what: "a 3 MiB header in the audio part",
                call_id: call("bighead"),
                form: Multipart::new()
                    .json("metadata", &meta(&call("bighead")))
                    .file_with_header(
                        "audio",
                        "good.wav",
                        ("x-padding", &"y".repeat(3 << 20)),
                        &good,
                    ),
                status: 400,
                codes: &["bad_request"],
            },
            BadUpload {
                what: "no audio part",
                call_id: call("noaudio"),
                form: Multipart::new().json("metadata", &meta(&call("noaudio"))),
                status: 422,
                codes: &["unsupported_audio", "invalid_metadata"],
            },
        ];
        let mut call_ids = vec![first.clone()];
        for case in cases {
            let what = case.what;
            let response = ok(what, recorder.post_multipart(case.form)).await;
            assert_eq!(
                response.status,
                case.status,
                "{what}: {}",
                String::from_utf8_lossy(&response.body)
            );
            assert!(
                case.codes.contains(&response.code().as_str()),
                "{what}: code {:?}, expected one of {:?}",
                response.code(),
                case.codes
            );
            let message = response.json()["error"]["message"]
                .as_str()
                .unwrap_or("")
                .to_owned();
            assert!(!message.is_empty(), "{what}: no error message");
            assert!(
                !message.contains("612345678"),
                "{what}: the error message repeats the number: {message}"
            );
            // A refused upload's blob, if it got that far, goes with its writer.
            eventually(&format!("the vault as before {what}"), || {
                vault_files(&data) == before
            })
            .await;
            assert_eq!(
                recording_count(&dpo).await,
                1,
                "{what}: a recording was stored"
            );
            assert!(
                listed(&dpo, &case.call_id).await.is_empty(),
                "{what}: listed"
            );
            call_ids.push(case.call_id);
        }
        assert_eq!(listed(&dpo, &first).await.len(), 1);
        assert_no_plaintext(
            &data,
            &[
                ("good".to_owned(), good.clone()),
                ("noise".to_owned(), noise.clone()),
            ],
            &call_ids,
        );
    });
}

#[test]
fn a_call_id_is_stored_once_repeats_are_idempotent_and_conflicts_refused() {
    let instance = Setup::new("").start();
    let call_id = format!("{}-1", call_prefix("idem"));
    let first = tone_wav(440.0, 1.0);
    let other = tone_wav(523.25, 1.0);
    runtime().block_on(async {
        let recorder = instance.client("recorder");
        let dpo = instance.client("dpo");
        let data = instance.setup.data.clone();
        let meta = metadata(&call_id, "+33612345678");

        let stored = ok("first", recorder.upload(&meta, "call.wav", &first)).await;
        assert_eq!(stored.status, 201, "{:?}", stored.body);
        let stored = stored.json();
        let id = stored["id"].as_str().unwrap().to_owned();
        let after_first = vault_files(&data);

        // Same call, same audio: 200 with the same recording.
        let again = ok("repeat", recorder.upload(&meta, "call.wav", &first)).await;
        assert_eq!(again.status, 200, "{:?}", again.body);
        let again = again.json();
        assert_eq!(again["id"], id.as_str(), "{again}");
        assert_eq!(again["status"], "stored", "{again}");
        assert_eq!(again["sha256"], sha256_hex(&first), "{again}");

        // Same call, other audio: 409, and the stored recording is untouched.
        let conflict = ok("conflict", recorder.upload(&meta, "call.wav", &other)).await;
        assert_eq!(conflict.status, 409, "{:?}", conflict.body);
        assert_eq!(conflict.code(), "duplicate_call_id");
        // The attempt to put other audio under a stored call is audited, on the stored one.
        let refusals = get_with(
            &dpo,
            &format!("/v1/audit?action=recording.ingest&object={id}"),
            &[],
        )
        .await
        .json();
        let last = refusals["items"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()
            .clone();
        assert_eq!(
            (&last["outcome"], &last["detail"], &last["actor"]),
            (
                &serde_json::json!("denied"),
                &serde_json::json!("call id already stored with different audio"),
                &serde_json::json!("recorder")
            ),
            "{refusals}"
        );

        assert_eq!(vault_files(&data), after_first);
        assert_eq!(recording_count(&dpo).await, 1);
        let items = listed(&dpo, &call_id).await;
        assert_eq!(items.len(), 1, "{items:?}");
        assert_eq!(items[0]["sha256"], sha256_hex(&first));
        let audio = get_with(&dpo, &audio_path(&id, "data_subject_request"), &[]).await;
        assert_eq!(audio.status, 200);
        assert!(audio.body[..] == first[..], "the stored audio changed");

        assert_no_plaintext(
            &data,
            &[
                ("first".to_owned(), first.clone()),
                ("other".to_owned(), other.clone()),
            ],
            std::slice::from_ref(&call_id),
        );
    });
}

#[test]
fn the_size_limit_is_enforced_and_an_abandoned_upload_leaves_nothing() {
    let instance = Setup::with_sections("", "max_recording_bytes = \"64 KiB\"", "").start();
    let prefix = call_prefix("limit");
    let small = tone_wav(440.0, 2.0); // 32 044 bytes
    let over = tone_wav(440.0, 6.25); // 100 044 bytes: caught while streaming
    let huge = tone_wav(440.0, 20.0); // 320 044 bytes: refused on its content-length
    assert!(small.len() < 64 * 1024 && over.len() > 64 * 1024);
    runtime().block_on(async {
        let recorder = instance.client("recorder");
        let dpo = instance.client("dpo");
        let data = instance.setup.data.clone();
        let mut call_ids = Vec::new();

        let call_id = format!("{prefix}-small");
        let response = ok(
            "small",
            recorder.upload(&metadata(&call_id, "0612345678"), "small.wav", &small),
        )
        .await;
        assert_eq!(response.status, 201, "{:?}", response.body);
        call_ids.push(call_id);
        let before = vault_files(&data);

        let check_nothing_left = |what: String| {
            let data = data.clone();
            let dpo = dpo.clone();
            async move {
                // An abandoned upload's blob goes when the server notices the disconnection.
                eventually(&format!("the vault as before {what}"), || {
                    vault_files(&data) == before
                })
                .await;
                assert_eq!(
                    recording_count(&dpo).await,
                    1,
                    "{what}: a recording was stored"
                );
            }
        };

        // Over the limit: announced by a content-length past the early check (answered
        // before any audio), announced below it, or chunked (both caught while streaming).
        // The client stops sending just past the limit and waits for the answer, so that it is
        // not writing when the server closes (see `an_early_413_reaches_a_recorder_...`).
        let limit = 64 * 1024;
        for (what, bytes, announced, sent) in [
            ("huge, with its length", &huge, Some(huge.len()), 0),
            (
                "over, with its length",
                &over,
                Some(over.len()),
                limit + 100,
            ),
            ("over, chunked", &over, None, limit + 100),
        ] {
            let call_id = format!("{prefix}-{}", what.replace([',', ' '], ""));
            let upload = recorder
                .start_upload_sized(&metadata(&call_id, "0612345678"), "big.wav", announced)
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            for piece in bytes[..sent].chunks(4096) {
                if upload.send(piece).await.is_err() {
                    break; // answered already
                }
            }
            let response = upload
                .answer()
                .await
                .unwrap_or_else(|e| panic!("{what}: no answer: {e}"));
            assert_eq!(response.status, 413, "{what}: {:?}", response.body);
            assert_eq!(response.code(), "payload_too_large", "{what}");
            assert!(listed(&dpo, &call_id).await.is_empty(), "{what}");
            check_nothing_left(what.to_owned()).await;
            call_ids.push(call_id);
        }

        // A recorder that disconnects mid-upload: its unfinished blob goes, no row appears.
        let call_id = format!("{prefix}-abandoned");
        let upload = recorder
            .start_upload(&metadata(&call_id, "0612345678"), "small.wav")
            .await
            .unwrap();
        upload.send(&small[..small.len() / 2]).await.unwrap();
        eventually("the upload is being written to its blob", || {
            vault_files(&data).blobs > before.blobs
        })
        .await;
        upload.abort().await;
        check_nothing_left("an abandoned upload".into()).await;
        assert!(listed(&dpo, &call_id).await.is_empty());
        call_ids.push(call_id);

        // The server is still fine, and the limit is not off by one chunk.
        assert_eq!(ok("status", dpo.get("/v1/status")).await.status, 200);
        assert_no_plaintext(
            &data,
            &[
                ("small".to_owned(), small.clone()),
                ("over".to_owned(), over.clone()),
                ("huge".to_owned(), huge.clone()),
            ],
            &call_ids,
        );
    });
}

#[test]
fn audio_reads_need_a_role_and_a_purpose_it_may_state_and_are_audited() {
    let instance = Setup::new("").start();
    let call_id = format!("{}-1", call_prefix("roles"));
    let wav = tone_wav(440.0, 1.0);
    runtime().block_on(async {
        let recorder = instance.client("recorder");
        let supervisor = instance.client("supervisor");
        let legal = instance.client("legal");
        let dpo = instance.client("dpo");
        let operator = instance.client("operator");

        let stored = ok(
            "upload",
            recorder.upload(&metadata(&call_id, "06 12 34 56 78"), "call.wav", &wav),
        )
        .await;
        assert_eq!(stored.status, 201, "{:?}", stored.body);
        let id = stored.json()["id"].as_str().unwrap().to_owned();

        // Purposes.
        let refused = get_with(&supervisor, &audio_path(&id, "litigation"), &[]).await;
        assert_eq!(
            (refused.status, refused.code().as_str()),
            (403, "purpose_not_allowed")
        );
        let missing = get_with(&supervisor, &format!("/v1/recordings/{id}/audio"), &[]).await;
        assert_eq!(
            (missing.status, missing.code().as_str()),
            (400, "purpose_required")
        );
        let mut allowed = Vec::new();
        for (who, client, purpose) in [
            ("supervisor", &supervisor, "quality_review"),
            ("supervisor", &supervisor, "training"),
            ("legal", &legal, "litigation"),
            ("dpo", &dpo, "data_subject_request"),
            ("legal", &legal, "fraud_control"),
        ] {
            let response = get_with(client, &audio_path(&id, purpose), &[]).await;
            assert_eq!(response.status, 200, "{who} {purpose}: {:?}", response.body);
            assert!(
                response.body[..] == wav[..],
                "{who} {purpose}: bytes differ"
            );
            allowed.push((who, purpose));
        }

        // Roles without access to audio.
        for (who, client) in [("recorder", &recorder), ("operator", &operator)] {
            let response = get_with(client, &audio_path(&id, "quality_review"), &[]).await;
            assert_eq!(
                (response.status, response.code().as_str()),
                (403, "forbidden"),
                "{who}"
            );
            let response = ok(who, client.get(&format!("/v1/recordings/{id}"))).await;
            assert_eq!(response.status, 403, "{who} reads metadata");
        }

        // Numbers: masked for supervisors, whole for legal and the DPO.
        for (who, client, caller, callee) in [
            ("supervisor", &supervisor, "+3361234••78", "+3314567••00"),
            ("legal", &legal, "+33612345678", "+33145678900"),
            ("dpo", &dpo, "+33612345678", "+33145678900"),
        ] {
            let one = ok(who, client.get(&format!("/v1/recordings/{id}"))).await;
            assert_eq!(one.status, 200, "{who}: {:?}", one.body);
            let one = one.json();
            assert_eq!(
                (one["caller"].as_str(), one["callee"].as_str()),
                (Some(caller), Some(callee)),
                "{who}: {one}"
            );
            let items = listed(client, &call_id).await;
            assert_eq!(items.len(), 1, "{who}");
            assert_eq!(items[0]["caller"], caller, "{who} list");
            assert_eq!(items[0]["callee"], callee, "{who} list");
        }

        // Every read is audited with its purpose, in order, and carries no number.
        let audit = ok(
            "audit",
            dpo.get("/v1/audit?action=recording.read_audio&limit=1000"),
        )
        .await;
        assert_eq!(audit.status, 200, "{:?}", audit.body);
        assert!(
            !String::from_utf8_lossy(&audit.body).contains("612345678"),
            "a number in the audit"
        );
        let entries: Vec<(String, String)> = audit.json()["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["object"] == id.as_str() && e["outcome"] == "allowed")
            .map(|e| {
                (
                    e["actor"].as_str().unwrap_or("").to_owned(),
                    e["purpose"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect();
        let expected: Vec<(String, String)> = allowed
            .iter()
            .map(|(who, purpose)| (who.to_string(), purpose.to_string()))
            .collect();
        assert_eq!(entries, expected);

        // The recorder's refused read is audited as denied.
        let recorder_audit = ok("audit", dpo.get("/v1/audit?actor=recorder&limit=1000")).await;
        let denied = recorder_audit.json()["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["outcome"] == "denied")
            .count();
        assert!(denied >= 2, "the recorder's refusals are not audited");
        // A role refused audio is audited with the purpose it stated.
        let operator_audit = ok(
            "audit",
            dpo.get("/v1/audit?actor=operator&action=recording.read_audio"),
        )
        .await;
        let operator_entries = operator_audit.json();
        let stated: Vec<&str> = operator_entries["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["purpose"].as_str())
            .collect();
        assert_eq!(stated, ["quality_review"]);

        assert_no_plaintext(
            &instance.setup.data,
            &[("call".to_owned(), wav.clone())],
            std::slice::from_ref(&call_id),
        );
    });
}

/// SPEC §4.8: every denied request is an audit entry — a purpose the role may not state is one.
#[test]
fn a_purpose_the_role_may_not_state_is_audited_as_denied() {
    let instance = Setup::new("").start();
    let call_id = format!("{}-1", call_prefix("deny"));
    runtime().block_on(async {
        let stored = ok(
            "upload",
            instance.client("recorder").upload(
                &metadata(&call_id, "0612345678"),
                "call.wav",
                &tone_wav(440.0, 1.0),
            ),
        )
        .await;
        assert_eq!(stored.status, 201, "{:?}", stored.body);
        let id = stored.json()["id"].as_str().unwrap().to_owned();
        let supervisor = instance.client("supervisor");
        let refused = get_with(&supervisor, &audio_path(&id, "litigation"), &[]).await;
        assert_eq!(refused.code(), "purpose_not_allowed");
        let audit = ok(
            "audit",
            instance
                .client("dpo")
                .get("/v1/audit?actor=supervisor&limit=1000"),
        )
        .await
        .json();
        let entries = audit["items"].as_array().unwrap();
        assert!(
            entries
                .iter()
                .any(|e| e["outcome"] == "denied" && e["object"] == id.as_str()),
            "the refused read (purpose litigation by a supervisor) is not in the audit: {entries:#?}"
        );
    });
}

/// RFC 9112 §9.6 (the TCP reset problem): a server that answers before reading the whole
/// request body must not close the connection under a client still sending it, or the client
/// gets a reset instead of the answer. A recorder sending a recording over `max_recording_bytes`
/// in one go (as curl without `Expect: 100-continue` does) must get its 413 (SPEC §5.1).
#[test]
fn an_early_413_reaches_a_recorder_still_sending_its_body() {
    let instance = Setup::with_sections("", "max_recording_bytes = \"64 KiB\"", "").start();
    let prefix = call_prefix("early413");
    let big = tone_wav(440.0, 150.0); // 2.4 MB
    runtime().block_on(async {
        let recorder = instance.client("recorder");
        let mut answers = Vec::new();
        for attempt in 0..40 {
            let call_id = format!("{prefix}-{attempt}");
            let answer = tokio::time::timeout(
                PATIENCE,
                recorder.upload(&metadata(&call_id, "0612345678"), "big.wav", &big),
            )
            .await
            .map_err(|_| "no answer".to_owned())
            .and_then(|result| result.map(|response| response.status));
            answers.push(answer);
        }
        assert!(
            answers.iter().all(|answer| *answer == Ok(413)),
            "answers to 40 uploads of {} bytes over a 64 KiB limit: {answers:?}",
            big.len()
        );
        eventually("no blob left", || {
            vault_files(&instance.setup.data)
                == VaultFiles {
                    blobs: 0,
                    temp: 0,
                    quarantine: 0,
                }
        })
        .await;
        assert_eq!(recording_count(&instance.client("dpo")).await, 0);
    });
}
