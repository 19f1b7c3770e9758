//! The real model on speech made here (espeak-ng): needs the model fetched
//! by `scripts/fetch-captions-model target/captions-model` (skips, saying
//! so, without it).

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use amphi_captions::Transcriber;
use amphi_captions::wer::word_error_rate;

pub fn model_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("AMPHI_TEST_CAPTIONS_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/captions-model")
        });
    dir.join("model.bin").exists().then_some(dir)
}

/// espeak-ng's voice as 16 kHz mono f32 (it speaks at 22.05 kHz; sox resamples).
fn speak(text: &str) -> Option<Vec<f32>> {
    let out = Command::new("sh")
        .arg("-c")
        .arg("espeak-ng -v en-us -s 150 --stdout \"$0\" | sox -t wav - -t raw -r 16000 -e float -b 32 -c 1 -")
        .arg(text)
        .output()
        .ok()?;
    if !out.status.success() || out.stdout.is_empty() {
        return None;
    }
    // 300 ms of quiet first, as the voice-activity pre-roll gives.
    Some(
        std::iter::repeat_n(0.0, 4_800)
            .chain(
                out.stdout
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            )
            .collect(),
    )
}

const SENTENCES: [&str; 4] = [
    "The quick brown fox jumps over the lazy dog.",
    "Please send the quarterly report to the finance team before Friday.",
    "We will open the doors at seven and the talk begins at eight.",
    "Thank you all for joining this audio room today.",
];

#[test]
fn espeak_sentences_are_transcribed_with_a_low_word_error_rate() {
    let Some(dir) = model_dir() else {
        eprintln!(
            "SKIPPED: no captions model (run scripts/fetch-captions-model target/captions-model)"
        );
        return;
    };
    let t0 = Instant::now();
    let mut model = Transcriber::load(&dir).expect("the model loads");
    eprintln!("model loaded in {:?}", t0.elapsed());
    let (mut errors, mut words) = (0.0, 0usize);
    for s in SENTENCES {
        let pcm = speak(s).expect("espeak-ng and sox speak");
        let t = Instant::now();
        let text = model.transcribe(&pcm).expect("transcribes");
        let wer = word_error_rate(s, &text);
        let n = amphi_captions::wer::words(s).len();
        errors += wer * n as f64;
        words += n;
        eprintln!(
            "{:.1} s of speech in {:?}: {text:?} (WER {:.1} %)",
            pcm.len() as f64 / 16_000.0,
            t.elapsed(),
            wer * 100.0
        );
    }
    let wer = errors / words as f64;
    eprintln!("WER over {} words: {:.1} %", words, wer * 100.0);
    assert!(wer < 0.15, "word error rate {:.1} %", wer * 100.0);
}

#[test]
fn silence_gives_no_words_and_a_missing_model_is_an_error() {
    assert!(matches!(
        Transcriber::load(std::path::Path::new("/nonexistent")),
        Err(amphi_captions::Error::Missing(_))
    ));
    let Some(dir) = model_dir() else {
        eprintln!("SKIPPED: no captions model");
        return;
    };
    let mut model = Transcriber::load(&dir).unwrap();
    let text = model.transcribe(&vec![0.0; 16_000]).unwrap();
    assert!(amphi_captions::wer::words(&text).len() <= 2, "{text:?}");
}
