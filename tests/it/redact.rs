//! Secret redaction: whatever the chunking, streamed output equals one-shot output, equals a
//! simple reference (every maximal run of bytes covered by a secret becomes `***`), and contains
//! no secret.

use maxions::sandbox::redact::{MASK, Redactor};
use maxions::secret::Secret;
use proptest::prelude::*;

fn secrets(values: &[Vec<u8>]) -> Vec<Secret> {
    values
        .iter()
        .enumerate()
        .map(|(i, value)| {
            let value = String::from_utf8(value.clone()).expect("generated secrets are ASCII");
            Secret::new(format!("SECRET_{i}"), value).expect("generated secrets are long enough")
        })
        .collect()
}

/// The specification, written the slow and obvious way.
fn reference(values: &[Vec<u8>], input: &[u8]) -> Vec<u8> {
    let mut covered = vec![false; input.len()];
    for value in values {
        for start in 0..input.len() {
            if input[start..].starts_with(value) {
                covered[start..start + value.len()].fill(true);
            }
        }
    }
    let mut out = Vec::new();
    for (i, &byte) in input.iter().enumerate() {
        if !covered[i] {
            out.push(byte);
        } else if i == 0 || !covered[i - 1] {
            out.extend_from_slice(MASK);
        }
    }
    out
}

fn streamed(redactor: &Redactor, input: &[u8], chunk_sizes: &[usize]) -> Vec<u8> {
    let mut stream = redactor.stream();
    let mut out = Vec::new();
    let mut rest = input;
    for &size in chunk_sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (chunk, tail) = rest.split_at(size.min(rest.len()));
        stream.write(chunk, &mut out);
        rest = tail;
    }
    stream.finish(&mut out);
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// Secrets over a tiny alphabet, so that they overlap, nest and share prefixes often.
fn tangled_secret() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(prop::sample::select(b"abc".to_vec()), 4..9)
}

/// Filler bytes that combine with secrets into near misses, plus invalid UTF-8.
fn filler() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(prop::sample::select(b"abc*\n\x00\xff".to_vec()), 0..12)
}

/// Input made of filler and secrets (picked by index), the secrets and a chunking.
fn case() -> impl Strategy<Value = (Vec<Vec<u8>>, Vec<u8>, Vec<usize>)> {
    (
        proptest::collection::vec(tangled_secret(), 1..6),
        proptest::collection::vec((filler(), any::<prop::sample::Index>()), 0..12),
        proptest::collection::vec(1usize..24, 1..12),
    )
        .prop_map(|(values, pieces, chunks)| {
            let mut input = Vec::new();
            for (fill, pick) in pieces {
                input.extend_from_slice(&fill);
                let picked: &Vec<u8> = pick.get(&values);
                input.extend_from_slice(picked);
            }
            (values, input, chunks)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn streamed_output_equals_one_shot_output_and_leaks_nothing(
        (values, input, chunks) in case()
    ) {
        let redactor = Redactor::new(&secrets(&values)).unwrap();
        let expected = reference(&values, &input);
        let one_shot = redactor.redact(&input);
        prop_assert_eq!(one_shot.as_ref(), expected.as_slice());
        let out = streamed(&redactor, &input, &chunks);
        prop_assert_eq!(&out, &expected);
        for value in &values {
            prop_assert!(!contains(&out, value), "secret {:?} leaked", String::from_utf8_lossy(value));
        }
    }

    #[test]
    fn many_realistic_secrets_in_random_bytes(
        values in proptest::collection::vec(
            proptest::collection::vec(prop::sample::select(b"abcdefghijklmnopqrstuvwxyz0123456789_-".to_vec()), 4..40),
            1..50,
        ),
        noise in proptest::collection::vec(any::<u8>(), 0..400),
        inserts in proptest::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>()), 0..10),
        chunks in proptest::collection::vec(1usize..200, 1..8),
    ) {
        let mut input = noise;
        for (at, pick) in inserts {
            let at = at.index(input.len() + 1);
            let value = pick.get(values.as_slice());
            input.splice(at..at, value.iter().copied());
        }
        let redactor = Redactor::new(&secrets(&values)).unwrap();
        let expected = reference(&values, &input);
        prop_assert_eq!(&streamed(&redactor, &input, &chunks), &expected);
        for value in &values {
            prop_assert!(!contains(&expected, value));
        }
    }
}

#[test]
fn a_secret_split_at_every_possible_place_is_masked() {
    let value = b"ghp_0123456789abcdef";
    let redactor = Redactor::new(&secrets(&[value.to_vec()])).unwrap();
    let input = [b"token=".as_slice(), value, b"; done"].concat();
    for first in 1..input.len() {
        for second in first..input.len() {
            let mut stream = redactor.stream();
            let mut out = Vec::new();
            stream.write(&input[..first], &mut out);
            stream.write(&input[first..second], &mut out);
            stream.write(&input[second..], &mut out);
            stream.finish(&mut out);
            assert_eq!(out, b"token=***; done", "split at {first} and {second}");
        }
    }
}

#[test]
fn overlapping_secrets_mask_their_union() {
    let values = [b"abcdefgh".to_vec(), b"efghijkl".to_vec(), b"cdef".to_vec()];
    let redactor = Redactor::new(&secrets(&values)).unwrap();
    // The union of all three runs from `a` to `l`: one mask, no tail of either secret left over.
    assert_eq!(redactor.redact_str("<abcdefghijkl>"), "<***>");
    assert_eq!(streamed(&redactor, b"<abcdefghijkl>", &[1]), b"<***>");
    // A secret that is a prefix of another.
    let values = [b"pass".to_vec(), b"password123".to_vec()];
    let redactor = Redactor::new(&secrets(&values)).unwrap();
    assert_eq!(
        redactor.redact_str("password123 pass passw"),
        "*** *** ***w"
    );
}

#[test]
fn one_byte_chunks_of_a_long_log_match_the_one_shot_result() {
    let values: Vec<Vec<u8>> = (0..50)
        .map(|i| format!("secret-{i:02}-xyzzy").into_bytes())
        .collect();
    let redactor = Redactor::new(&secrets(&values)).unwrap();
    let mut input = Vec::new();
    for i in 0..500 {
        input.extend_from_slice(
            format!(
                "line {i}: secret-{:02}-xyzzy and secret-{:02}-xyz\n",
                i % 50,
                i % 7
            )
            .as_bytes(),
        );
    }
    assert_eq!(
        streamed(&redactor, &input, &[1]),
        redactor.redact(&input).as_ref()
    );
    assert_eq!(
        streamed(&redactor, &input, &[1]),
        reference(&values, &input)
    );
}
