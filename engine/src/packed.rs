//! Many short byte strings in one buffer: vocabularies, merge lists and decode
//! tables run to hundreds of thousands of entries, which as separate
//! allocations would cost several times their bytes.

/// Byte strings in order, stored end to end.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Packed {
    bytes: Vec<u8>,
    /// `ends[i]`: where item `i` ends in `bytes` (it starts where `i - 1` ends).
    ends: Vec<usize>,
}

impl Packed {
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn get(&self, i: usize) -> Option<&[u8]> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        Some(&self.bytes[start..end])
    }

    pub fn push(&mut self, item: &[u8]) {
        self.bytes.extend_from_slice(item);
        self.ends.push(self.bytes.len());
    }

    /// Gives back the room left over from growing.
    pub fn shrink_to_fit(&mut self) {
        self.bytes.shrink_to_fit();
        self.ends.shrink_to_fit();
    }
}

impl<T: AsRef<[u8]>> FromIterator<T> for Packed {
    fn from_iter<I: IntoIterator<Item = T>>(items: I) -> Self {
        let mut packed = Packed::default();
        for item in items {
            packed.push(item.as_ref());
        }
        packed.shrink_to_fit();
        packed
    }
}

#[cfg(test)]
mod tests {
    use super::Packed;

    #[test]
    fn items_come_back_as_pushed_empty_ones_included() {
        let packed: Packed = ["ab", "", "cde"].into_iter().collect();
        assert_eq!(packed.len(), 3);
        assert_eq!(
            (packed.get(0), packed.get(1), packed.get(2), packed.get(3)),
            (Some(&b"ab"[..]), Some(&b""[..]), Some(&b"cde"[..]), None)
        );
    }
}
