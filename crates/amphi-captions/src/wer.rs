//! Word error rate: word-level edit distance over the reference's length,
//! after lowercasing and dropping punctuation.

/// The words of `text`, lowercased, punctuation dropped, and small
/// numbers written as words ("7" and "seven" are the same word, as
/// Whisper's own evaluation normalises them).
pub fn words(text: &str) -> Vec<String> {
    const SMALL: [&str; 21] = [
        "zero",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "eleven",
        "twelve",
        "thirteen",
        "fourteen",
        "fifteen",
        "sixteen",
        "seventeen",
        "eighteen",
        "nineteen",
        "twenty",
    ];
    text.split_whitespace()
        .map(|w| {
            w.chars()
                .filter(|c| c.is_alphanumeric() || *c == '\'')
                .flat_map(char::to_lowercase)
                .collect::<String>()
        })
        .filter(|w| !w.is_empty())
        .map(|w| match w.parse::<usize>() {
            Ok(n) if n < SMALL.len() => SMALL[n].to_owned(),
            _ => w,
        })
        .collect()
}

/// Substitutions + deletions + insertions over the reference's words.
pub fn word_error_rate(reference: &str, hypothesis: &str) -> f64 {
    let r = words(reference);
    let h = words(hypothesis);
    if r.is_empty() {
        return if h.is_empty() { 0.0 } else { 1.0 };
    }
    let mut prev: Vec<usize> = (0..=h.len()).collect();
    for (i, rw) in r.iter().enumerate() {
        let mut cur = vec![i + 1; h.len() + 1];
        for (j, hw) in h.iter().enumerate() {
            let sub = prev[j] + usize::from(rw != hw);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[h.len()] as f64 / r.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_are_counted_per_reference_word() {
        assert_eq!(word_error_rate("Hello, world.", "hello world"), 0.0);
        assert_eq!(
            word_error_rate("the cat sat", "the cat sat down"),
            1.0 / 3.0
        );
        assert_eq!(word_error_rate("the cat sat", "a cat"), 2.0 / 3.0);
        assert_eq!(word_error_rate("at seven", "at 7."), 0.0);
    }
}
