//! Redaction throughput with 50 secrets, against a plain copy of the same bytes in the same run
//! (DESIGN.md §11: at least 200 MB/s). Run with `cargo bench --bench redaction`.
//!
//! The input is 64 MiB of log-like text (words, numbers, paths) with a secret every ~64 KiB and
//! many near misses (secret prefixes), fed in chunks the way exec output arrives. Each figure is
//! the best of several passes; MB here means 10^6 bytes. Then the same with 1, 10, 50 and 500
//! secrets (64 KiB chunks), the curve of what each secret costs. Figures go to
//! `target/bench/redaction.json`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use maxions::sandbox::redact::Redactor;
use maxions::secret::Secret;

#[path = "common/figures.rs"]
mod figures;
use figures::{Figure, Figures, Target};

const INPUT_BYTES: usize = 64 << 20;
const SECRETS: usize = 50;
const PASSES: usize = 5;

/// xorshift64*: reproducible input without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).unwrap_or(0)
    }
}

fn secrets(rng: &mut Rng) -> Vec<Secret> {
    secrets_n(rng, SECRETS)
}

fn secrets_n(rng: &mut Rng, count: usize) -> Vec<Secret> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..count)
        .map(|i| {
            let len = 20 + rng.below(41);
            let prefix = ["ghp_", "sk-", "xoxb-", "AKIA", ""][i % 5];
            let mut value = String::from(prefix);
            value.extend((0..len).map(|_| char::from(ALPHABET[rng.below(ALPHABET.len())])));
            Secret::new(format!("SECRET_{i}"), value).expect("long enough")
        })
        .collect()
}

fn log_text(rng: &mut Rng, secrets: &[Secret]) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "Compiling",
        "warning:",
        "error[E0308]:",
        "src/main.rs:42:7",
        "test",
        "ok",
        "passed",
        "Downloading",
        "https://github.com/owner/repo",
        "GET",
        "200",
        "token",
        "Bearer",
        "sk-",
        "ghp_",
        "the",
        "value",
        "=",
        "->",
        "npm",
        "install",
        "0.1.0",
        "{\"id\":",
        "12345,",
    ];
    let mut out = Vec::with_capacity(INPUT_BYTES + 4096);
    let mut next_secret = 0;
    while out.len() < INPUT_BYTES {
        for _ in 0..(4 + rng.below(12)) {
            out.extend_from_slice(WORDS[rng.below(WORDS.len())].as_bytes());
            out.push(b' ');
        }
        if out.len() >= next_secret {
            let secret = &secrets[rng.below(secrets.len())];
            out.extend_from_slice(secret.expose().as_bytes());
            next_secret = out.len() + 64 * 1024;
        } else if rng.below(8) == 0 {
            // A near miss: the first half of a secret.
            let value = secrets[rng.below(secrets.len())].expose().as_bytes();
            out.extend_from_slice(&value[..value.len() / 2]);
        }
        out.push(b'\n');
    }
    out.truncate(INPUT_BYTES);
    out
}

fn best_of(mut pass: impl FnMut()) -> Duration {
    (0..PASSES)
        .map(|_| {
            let start = Instant::now();
            pass();
            start.elapsed()
        })
        .min()
        .unwrap_or_default()
}

/// The input copied chunk by chunk: the baseline.
fn copy_pass(input: &[u8], chunk: usize, out: &mut Vec<u8>) {
    out.clear();
    for piece in input.chunks(chunk) {
        out.extend_from_slice(black_box(piece));
    }
    black_box(&out);
}

/// The input through a streaming redactor, chunk by chunk, the way exec output arrives.
fn redact_pass(redactor: &Redactor, input: &[u8], chunk: usize, out: &mut Vec<u8>) {
    out.clear();
    let mut stream = redactor.stream();
    for piece in input.chunks(chunk) {
        stream.write(black_box(piece), out);
    }
    stream.finish(out);
    black_box(&out);
}

fn mb_per_s(bytes: usize, time: Duration) -> f64 {
    bytes as f64 / 1e6 / time.as_secs_f64()
}

fn main() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let secrets = secrets(&mut rng);
    let input = log_text(&mut rng, &secrets);
    let redactor = Redactor::new(&secrets).expect("redactor");
    let mut out = Vec::with_capacity(INPUT_BYTES + 4096);

    // The output must be right before its speed means anything.
    let masked = redactor.redact(&input);
    for secret in &secrets {
        let value = secret.expose().as_bytes();
        assert!(
            !masked.windows(value.len()).any(|w| w == value),
            "a secret leaked"
        );
    }

    println!(
        "redaction benchmark: {} MiB of log text, {SECRETS} secrets, best of {PASSES} passes",
        INPUT_BYTES >> 20
    );
    // The plain copy at 64 KiB is the curve's baseline below too (copying does not depend on
    // what the bytes are, and every input is as long).
    let mut copy_64k = 0.0;
    for chunk in [64 * 1024, 4 * 1024] {
        let copy = best_of(|| copy_pass(&input, chunk, &mut out));
        let redact = best_of(|| redact_pass(&redactor, &input, chunk, &mut out));
        let (copy_rate, redact_rate) = (mb_per_s(input.len(), copy), mb_per_s(input.len(), redact));
        if chunk == 64 * 1024 {
            copy_64k = copy_rate;
        }
        println!(
            "chunks of {:>2} KiB: copy {copy_rate:>8.0} MB/s, redact {redact_rate:>6.0} MB/s, \
             redact/copy time ratio {:.1}x, target 200 MB/s: {}",
            chunk / 1024,
            redact.as_secs_f64() / copy.as_secs_f64(),
            if redact_rate >= 200.0 {
                "met"
            } else {
                "MISSED"
            },
        );
    }
    let mut figures = Figures::new("redaction");
    {
        let chunk = 64 * 1024;
        let copy_rate = copy_64k;
        println!("\nsecrets (64 KiB chunks, each input with its own secrets):");
        for count in [1_usize, 10, 50, 500] {
            let mut rng = Rng(0x5851_f42d_4c95_7f2d ^ count as u64);
            let secrets = secrets_n(&mut rng, count);
            let input = log_text(&mut rng, &secrets);
            let redactor = Redactor::new(&secrets).expect("redactor");
            let redact = best_of(|| redact_pass(&redactor, &input, chunk, &mut out));
            let rate = mb_per_s(input.len(), redact);
            println!("{count:>4} secrets: {rate:>6.0} MB/s (copy {copy_rate:.0} MB/s)");
            // Throughputs: the ratio that says "slower" is the baseline's over this one.
            let mut figure = Figure::new(
                &format!("redact.secrets.{count}"),
                &format!("redactor alone, {count} secrets, 64 KiB chunks"),
                "MB/s",
                rate,
            )
            .at("redactor: secrets", count as f64)
            .against("plain copy of the same bytes", copy_rate);
            if count == SECRETS {
                figure = figure.target(Target::AtLeast { value: 200.0 });
            }
            figures.push(figure);
        }
    }
    figures.write();
    let one_shot = best_of(|| {
        black_box(redactor.redact(black_box(&input)));
    });
    println!(
        "one-shot redact of the whole input: {:.0} MB/s",
        mb_per_s(input.len(), one_shot)
    );
}
