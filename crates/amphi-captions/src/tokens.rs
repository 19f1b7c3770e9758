//! Whisper's byte-level BPE, decode direction only: ids → text, read from
//! the model's `tokenizer.json` (`model.vocab` and `added_tokens`).

use std::collections::HashMap;

use crate::Error;

#[derive(Debug)]
pub struct Tokens {
    /// id → the token's bytes (byte-level alphabet already undone);
    /// `None` for special tokens.
    pieces: Vec<Option<Vec<u8>>>,
    special: HashMap<String, u32>,
}

impl Tokens {
    pub fn from_json(json: &[u8]) -> Result<Self, Error> {
        #[derive(serde::Deserialize)]
        struct File {
            model: Model,
            #[serde(default)]
            added_tokens: Vec<Added>,
        }
        #[derive(serde::Deserialize)]
        struct Model {
            vocab: HashMap<String, u32>,
        }
        #[derive(serde::Deserialize)]
        struct Added {
            id: u32,
            content: String,
        }
        let file: File = serde_json::from_slice(json)
            .map_err(|e| Error::Model(format!("tokenizer.json: {e}")))?;
        let unbyte = byte_decoder();
        let max = file
            .model
            .vocab
            .values()
            .chain(file.added_tokens.iter().map(|a| &a.id))
            .copied()
            .max()
            .unwrap_or(0) as usize;
        if max > 1_000_000 {
            return Err(Error::Model("tokenizer.json: ids out of range".into()));
        }
        let mut pieces = vec![None; max + 1];
        for (text, id) in &file.model.vocab {
            let bytes: Option<Vec<u8>> = text.chars().map(|c| unbyte.get(&c).copied()).collect();
            pieces[*id as usize] = bytes;
        }
        let mut special = HashMap::new();
        for a in file.added_tokens {
            pieces[a.id as usize] = None;
            special.insert(a.content, a.id);
        }
        Ok(Self { pieces, special })
    }

    pub fn special(&self, name: &str) -> Option<u32> {
        self.special.get(name).copied()
    }

    /// The text of ordinary tokens; special tokens are skipped.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for id in ids {
            if let Some(Some(p)) = self.pieces.get(*id as usize) {
                bytes.extend_from_slice(p);
            }
        }
        String::from_utf8_lossy(&bytes).trim().to_string()
    }
}

/// GPT-2's printable alphabet for bytes, reversed.
fn byte_decoder() -> HashMap<char, u8> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut chars = printable.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + n);
            n += 1;
        }
    }
    printable
        .into_iter()
        .zip(chars)
        .filter_map(|(b, c)| Some((char::from_u32(c)?, b as u8)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_pieces_decode_to_text() {
        let json = br#"{"model":{"vocab":{"Hello":0,"\u0120world":1,"!":2}},
            "added_tokens":[{"id":3,"content":"<|endoftext|>"}]}"#;
        let t = Tokens::from_json(json).unwrap();
        assert_eq!(t.decode(&[0, 1, 2, 3]), "Hello world!");
        assert_eq!(t.special("<|endoftext|>"), Some(3));
        assert_eq!(t.decode(&[99]), "");
    }
}
