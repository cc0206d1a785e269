//! Vault throughput next to raw AES-256-GCM on the same buffers, in the same run.
//!
//! - `raw_aes256gcm`: one AES-256-GCM call over each chunk of the default size (the floor: pure cipher).
//! - `vault_format`: the vault's chunk sealing/opening (nonce derivation, header AAD, tags).
//! - `vault_store`: the whole write path (blob file, chunks, fsync, dir fsync where needed) and the
//!   streaming reader (`PlainReader`), on the data directory's file system.
//!
//! - `interleaved`: raw and vault passes over the same 16 MiB, alternating, and the median of
//!   the per-pair ratios. Criterion measures one function for seconds, then the other: on a
//!   shared virtual machine the CPU's speed drifts by ±20 % between the two, which an
//!   alternating pair does not see. The target verdict uses these ratios.
//!
//! Run: `cargo bench --bench vault`. The target is vault ≥ 80 % of raw.

use std::hint::black_box;
use std::io::Read;

use aes_gcm::{AeadInOut, Aes256Gcm, KeyInit};
use callguard::vault::format::{DEFAULT_CHUNK_SIZE, Header};
use callguard::vault::keys::DataKey;
use callguard::vault::store::{BlobWriter, PlainReader};
use callguard::vault::{BlobId, Vault};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const TOTAL: usize = 16 << 20;

fn buffer() -> Vec<u8> {
    (0..TOTAL).map(|i| (i * 7 % 251) as u8).collect()
}

/// The same 16 MiB through the raw cipher and through the vault's format, in default-size
/// chunks, both ways: what the criterion groups and the alternating pairs time.
struct Passes {
    data: Vec<u8>,
    chunk: usize,
    n_chunks: usize,
    cipher: Aes256Gcm,
    header: Header,
    /// `data` sealed by `raw_encrypt` (nonce, ciphertext, tag per chunk).
    raw_sealed: Vec<([u8; 12], Vec<u8>, aes_gcm::Tag)>,
    /// `data` sealed by `vault_encrypt` (ciphertext ‖ tag per chunk).
    vault_sealed: Vec<Vec<u8>>,
}

impl Passes {
    fn new() -> Passes {
        let data = buffer();
        let chunk = DEFAULT_CHUNK_SIZE as usize;
        let mut passes = Passes {
            n_chunks: data.len().div_ceil(chunk),
            data,
            chunk,
            cipher: Aes256Gcm::new(&[7u8; 32].into()),
            header: Header {
                chunk_size: DEFAULT_CHUNK_SIZE,
                recording_id: [1; 16],
                nonce_prefix: [2; 7],
            },
            raw_sealed: Vec::new(),
            vault_sealed: Vec::new(),
        };
        for (idx, piece) in passes.data.chunks(chunk).enumerate() {
            let mut buf = piece.to_vec();
            let tag = passes.raw_seal(idx, &mut buf);
            passes.raw_sealed.push((raw_nonce(idx), buf, tag));
            let mut buf = piece.to_vec();
            let tag = passes.vault_seal(idx, &mut buf);
            buf.extend_from_slice(&tag);
            passes.vault_sealed.push(buf);
        }
        passes
    }

    fn raw_seal(&self, idx: usize, piece: &mut [u8]) -> aes_gcm::Tag {
        self.cipher
            .encrypt_inout_detached(&raw_nonce(idx).into(), b"", piece.into())
            .unwrap()
    }

    fn vault_seal(&self, idx: usize, piece: &mut [u8]) -> [u8; 16] {
        self.header
            .seal_chunk(&self.cipher, idx as u64, idx + 1 == self.n_chunks, piece)
            .unwrap()
    }

    /// Encrypts a fresh copy of the data in `work`, chunk by chunk, with the raw cipher.
    fn raw_encrypt(&self, work: &mut [u8]) {
        work.copy_from_slice(&self.data);
        for (idx, piece) in work.chunks_mut(self.chunk).enumerate() {
            black_box(self.raw_seal(idx, piece));
        }
    }

    /// Same, through the vault's format.
    fn vault_encrypt(&self, work: &mut [u8]) {
        work.copy_from_slice(&self.data);
        for (idx, piece) in work.chunks_mut(self.chunk).enumerate() {
            black_box(self.vault_seal(idx, piece));
        }
    }

    /// Decrypts fresh copies of `raw_sealed` in `bufs`.
    fn raw_decrypt(&self, bufs: &mut [Vec<u8>]) {
        for ((nonce, original, tag), buf) in self.raw_sealed.iter().zip(bufs.iter_mut()) {
            buf.copy_from_slice(original);
            self.cipher
                .decrypt_inout_detached(&(*nonce).into(), b"", buf.as_mut_slice().into(), tag)
                .unwrap();
        }
    }

    /// Decrypts fresh copies of `vault_sealed` in `bufs`.
    fn vault_decrypt(&self, bufs: &mut [Vec<u8>]) {
        for (idx, (original, buf)) in self.vault_sealed.iter().zip(bufs.iter_mut()).enumerate() {
            buf.copy_from_slice(original);
            let last = idx + 1 == self.n_chunks;
            black_box(
                self.header
                    .open_chunk(&self.cipher, idx as u64, last, buf)
                    .unwrap(),
            );
        }
    }

    fn raw_bufs(&self) -> Vec<Vec<u8>> {
        self.raw_sealed
            .iter()
            .map(|(_, buf, _)| buf.clone())
            .collect()
    }
}

/// The raw cipher's nonce for chunk `idx`.
fn raw_nonce(idx: usize) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[..8].copy_from_slice(&(idx as u64).to_be_bytes());
    nonce
}

fn raw_and_format(c: &mut Criterion) {
    let passes = Passes::new();
    let mut group = c.benchmark_group("encrypt_16MiB");
    group.throughput(Throughput::Bytes(TOTAL as u64));
    group.sample_size(20);
    let mut work = passes.data.clone();
    group.bench_function("raw_aes256gcm", |b| {
        b.iter(|| passes.raw_encrypt(&mut work))
    });
    group.bench_function("vault_format", |b| {
        b.iter(|| passes.vault_encrypt(&mut work))
    });
    group.finish();

    let mut group = c.benchmark_group("decrypt_16MiB");
    group.throughput(Throughput::Bytes(TOTAL as u64));
    group.sample_size(20);
    group.bench_function("raw_aes256gcm", |b| {
        let mut bufs = passes.raw_bufs();
        b.iter(|| passes.raw_decrypt(&mut bufs))
    });
    group.bench_function("vault_format", |b| {
        let mut bufs = passes.vault_sealed.clone();
        b.iter(|| passes.vault_decrypt(&mut bufs))
    });
    group.finish();
}

fn store(c: &mut Criterion) {
    let data = buffer();
    let dir =
        tempfile::tempdir_in(std::env::var_os("CALLGUARD_BENCH_DIR").unwrap_or_else(|| ".".into()))
            .unwrap();
    let vault = Vault::open(&dir.path().join("vault")).unwrap();
    let key = DataKey::generate().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("store_16MiB");
    group.throughput(Throughput::Bytes(TOTAL as u64));
    group.sample_size(10);
    let mut last = None;
    group.bench_function("vault_write_fsync", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let mut writer = BlobWriter::create(&vault, BlobId::generate(), &key, u64::MAX)
                    .await
                    .unwrap();
                for piece in data.chunks(256 * 1024) {
                    writer.write(piece).await.unwrap();
                }
                let sealed = writer.finish().await.unwrap();
                if let Some(previous) = last.replace(sealed.id) {
                    vault.remove(&previous).unwrap();
                }
            })
        })
    });
    let id = last.expect("one blob written");
    group.bench_function("vault_read", |b| {
        let mut buf = vec![0u8; 256 * 1024];
        b.iter(|| {
            let mut reader = PlainReader::danger_open_unaudited(&vault, id, &key).unwrap();
            while reader.read(&mut buf).unwrap() > 0 {}
        })
    });
    group.finish();
}

/// Pairs of passes, raw then vault or vault then raw, for `interleaved`.
const PAIRS: usize = 31;

/// The median (and range) over `PAIRS` alternating pairs of raw time / vault time: the vault's
/// throughput as a share of the raw cipher's, measured side by side.
fn interleaved(_: &mut Criterion) {
    let passes = Passes::new();
    let mut work = passes.data.clone();
    let mut ratios = pair_ratios(|raw| match raw {
        true => passes.raw_encrypt(&mut work),
        false => passes.vault_encrypt(&mut work),
    });
    report("encrypt", &mut ratios);
    let (mut raw_bufs, mut vault_bufs) = (passes.raw_bufs(), passes.vault_sealed.clone());
    let mut ratios = pair_ratios(|raw| match raw {
        true => passes.raw_decrypt(&mut raw_bufs),
        false => passes.vault_decrypt(&mut vault_bufs),
    });
    report("decrypt", &mut ratios);
}

/// Times `pass(true)` (raw) and `pass(false)` (vault) in `PAIRS` pairs, alternating which goes
/// first; raw time / vault time for each pair.
fn pair_ratios(mut pass: impl FnMut(bool)) -> Vec<f64> {
    let mut timed = |raw: bool| {
        let start = std::time::Instant::now();
        pass(raw);
        start.elapsed().as_secs_f64()
    };
    (0..PAIRS)
        .map(|round| match round % 2 {
            0 => {
                let raw = timed(true);
                raw / timed(false)
            }
            _ => {
                let vault = timed(false);
                timed(true) / vault
            }
        })
        .collect()
}

fn report(what: &str, ratios: &mut [f64]) {
    ratios.sort_by(f64::total_cmp);
    println!(
        "interleaved {what}: vault/raw {:.0} % (median of {} alternating pairs of 16 MiB passes; range {:.0}–{:.0} %)",
        ratios[ratios.len() / 2] * 100.0,
        ratios.len(),
        ratios[0] * 100.0,
        ratios[ratios.len() - 1] * 100.0
    );
}

criterion_group!(benches, raw_and_format, interleaved, store);
criterion_main!(benches);
