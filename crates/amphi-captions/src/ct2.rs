//! CTranslate2's `model.bin`: a version, the spec's name and revision, then
//! named variables (rank, dims, dtype, bytes) and aliases. Parsed here
//! without CTranslate2 itself; only what a Whisper spec holds is supported.

use std::collections::HashMap;

use crate::Error;

/// The element type of a variable, as CTranslate2 numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ct2Dtype {
    F32,
    I8,
    I16,
    I32,
    F16,
    Bf16,
}

impl Ct2Dtype {
    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => Self::F32,
            1 => Self::I8,
            2 => Self::I16,
            3 => Self::I32,
            4 => Self::F16,
            5 => Self::Bf16,
            _ => return None,
        })
    }

    fn size(self) -> usize {
        match self {
            Self::F32 | Self::I32 => 4,
            Self::I8 => 1,
            Self::I16 | Self::F16 | Self::Bf16 => 2,
        }
    }
}

/// One named variable of the model: its shape, type and raw little-endian bytes.
#[derive(Debug, Clone)]
pub struct Variable {
    pub shape: Vec<usize>,
    pub dtype: Ct2Dtype,
    pub data: Vec<u8>,
}

impl Variable {
    /// The values as f32 (f16, bf16 and f32 variables; integers converted).
    pub fn to_f32(&self) -> Vec<f32> {
        match self.dtype {
            Ct2Dtype::F32 => self
                .data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Ct2Dtype::F16 => self
                .data
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Ct2Dtype::Bf16 => self
                .data
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Ct2Dtype::I8 => self.data.iter().map(|&b| b as i8 as f32).collect(),
            Ct2Dtype::I16 => self
                .data
                .chunks_exact(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]]) as f32)
                .collect(),
            Ct2Dtype::I32 => self
                .data
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32)
                .collect(),
        }
    }

    /// A scalar integer variable (e.g. `encoder/num_heads`).
    pub fn scalar_usize(&self) -> Option<usize> {
        if !self.shape.is_empty() {
            return None;
        }
        self.to_f32()
            .first()
            .copied()
            .filter(|v| *v >= 0.0)
            .map(|v| v as usize)
    }
}

/// A parsed `model.bin`.
#[derive(Debug, Default)]
pub struct Ct2Model {
    pub spec: String,
    pub revision: u32,
    pub variables: HashMap<String, Variable>,
    pub aliases: HashMap<String, String>,
}

impl Ct2Model {
    pub fn get(&self, name: &str) -> Option<&Variable> {
        self.variables.get(name).or_else(|| {
            self.aliases
                .get(name)
                .and_then(|target| self.variables.get(target))
        })
    }

    /// Parses the file's bytes. Refuses (never panics on) a truncated or
    /// inconsistent file.
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        let mut r = Reader { bytes, at: 0 };
        let version = r.u32()?;
        if !(2..=6).contains(&version) {
            return Err(Error::Model(format!(
                "model.bin version {version} not supported"
            )));
        }
        let spec = r.string()?;
        let revision = r.u32()?;
        let count = r.u32()? as usize;
        let mut variables = HashMap::with_capacity(count.min(4096));
        for _ in 0..count {
            let name = r.string()?;
            let rank = r.u8()? as usize;
            let mut shape = Vec::with_capacity(rank);
            for _ in 0..rank {
                shape.push(r.u32()? as usize);
            }
            let dtype = if version >= 4 {
                let code = r.u8()?;
                Ct2Dtype::from_code(code)
                    .ok_or_else(|| Error::Model(format!("{name}: unknown dtype {code}")))?
            } else {
                match r.u8()? {
                    4 => Ct2Dtype::F32,
                    2 => Ct2Dtype::I16,
                    1 => Ct2Dtype::I8,
                    n => return Err(Error::Model(format!("{name}: item size {n}"))),
                }
            };
            let len = r.u32()? as usize;
            let elements: usize = shape.iter().product();
            if elements.checked_mul(dtype.size()) != Some(len) {
                return Err(Error::Model(format!(
                    "{name}: {len} bytes for shape {shape:?} of {dtype:?}"
                )));
            }
            let data = r.take(len)?.to_vec();
            variables.insert(name, Variable { shape, dtype, data });
        }
        let mut aliases = HashMap::new();
        if version >= 3 && r.at < bytes.len() {
            let n = r.u32()?;
            for _ in 0..n {
                let alias = r.string()?;
                let target = r.string()?;
                aliases.insert(alias, target);
            }
        }
        Ok(Self {
            spec,
            revision,
            variables,
            aliases,
        })
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.bytes.len())
            .ok_or_else(|| Error::Model("model.bin is truncated".into()))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, Error> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, Error> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    /// A length (u16, counting the trailing NUL) then the bytes.
    fn string(&mut self) -> Result<String, Error> {
        let n = self.u16()? as usize;
        let b = self.take(n)?;
        let b = b.strip_suffix(&[0]).unwrap_or(b);
        String::from_utf8(b.to_vec()).map_err(|_| Error::Model("a name is not UTF-8".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&((s.len() + 1) as u16).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }

    #[test]
    fn a_small_model_round_trips_and_truncations_are_refused() {
        let mut b = Vec::new();
        b.extend_from_slice(&6u32.to_le_bytes());
        string(&mut b, "WhisperSpec");
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&1u32.to_le_bytes());
        string(&mut b, "w");
        b.push(2);
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&2u32.to_le_bytes());
        b.push(4);
        b.extend_from_slice(&4u32.to_le_bytes());
        b.extend_from_slice(&half::f16::from_f32(1.5).to_le_bytes());
        b.extend_from_slice(&half::f16::from_f32(-2.0).to_le_bytes());
        b.extend_from_slice(&1u32.to_le_bytes());
        string(&mut b, "alias");
        string(&mut b, "w");
        let m = Ct2Model::parse(&b).unwrap();
        assert_eq!(m.spec, "WhisperSpec");
        assert_eq!(m.get("alias").unwrap().to_f32(), vec![1.5, -2.0]);
        assert_eq!(m.get("w").unwrap().shape, vec![1, 2]);
        for cut in 0..b.len() - 1 {
            let _ = Ct2Model::parse(&b[..cut]);
        }
        assert!(Ct2Model::parse(&b[..b.len() - 12]).is_err());
    }
}
