//! The protobuf wire format, read field by field from a message's bytes: keys, varints,
//! length-delimited values, and unknown fields and groups skipped, with the checks prost makes
//! and its nesting limit.

use super::WireError;
use crate::encode::Text;

const INVALID_VARINT: WireError = WireError::new("invalid varint");
const UNDERFLOW: WireError = WireError::new("buffer underflow");
const WRONG_WIRE_TYPE: WireError = WireError::new("invalid wire type");
const END_GROUP_TAG: WireError = WireError::new("unexpected end group tag");
const RECURSION_LIMIT_REACHED: WireError = WireError::new("recursion limit reached");

/// How deep messages and groups may nest below the record: prost's limit, so both refuse the
/// same input.
const RECURSION_LIMIT: u32 = 100;

pub(super) const VARINT: u32 = 0;
pub(super) const FIXED64: u32 = 1;
pub(super) const LENGTH_DELIMITED: u32 = 2;
pub(super) const START_GROUP: u32 = 3;
pub(super) const END_GROUP: u32 = 4;
pub(super) const FIXED32: u32 = 5;

/// The fields of one message, read in order. `depth` is how much deeper messages and groups
/// may still nest inside it.
pub(super) struct Fields<'a> {
    rest: &'a [u8],
    depth: u32,
}

impl<'a> Fields<'a> {
    /// The fields of a whole record.
    pub(super) fn of_record(bytes: &'a [u8]) -> Self {
        Self {
            rest: bytes,
            depth: RECURSION_LIMIT,
        }
    }

    /// The next field's number and wire type, or None at the end of the message.
    pub(super) fn key(&mut self) -> Result<Option<(u32, u32)>, WireError> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let key = self.read_varint()?;
        let key = u32::try_from(key).map_err(|_| WireError::new("invalid key value"))?;
        let (tag, wire) = (key >> 3, key & 0x7);
        if wire > FIXED32 {
            return Err(WireError::new("invalid wire type value"));
        }
        if tag == 0 {
            return Err(WireError::new("invalid tag value: 0"));
        }
        Ok(Some((tag, wire)))
    }

    /// A varint field's value.
    pub(super) fn varint(&mut self, wire: u32) -> Result<u64, WireError> {
        expect(wire, VARINT)?;
        self.read_varint()
    }

    /// A string field's value, which must be UTF-8.
    pub(super) fn string(&mut self, wire: u32) -> Result<Text<'a>, WireError> {
        expect(wire, LENGTH_DELIMITED)?;
        Text::new(self.length_delimited()?).ok_or(WireError::new(
            "invalid string value: data is not UTF-8 encoded",
        ))
    }

    /// A message field's own fields, one level deeper.
    pub(super) fn message(&mut self, wire: u32) -> Result<Fields<'a>, WireError> {
        expect(wire, LENGTH_DELIMITED)?;
        if self.depth == 0 {
            return Err(RECURSION_LIMIT_REACHED);
        }
        Ok(Fields {
            rest: self.length_delimited()?,
            depth: self.depth - 1,
        })
    }

    /// Passes over a field this reader does not know.
    pub(super) fn skip(&mut self, tag: u32, wire: u32) -> Result<(), WireError> {
        self.skip_at(tag, wire, self.depth)
    }

    fn skip_at(&mut self, tag: u32, wire: u32, depth: u32) -> Result<(), WireError> {
        if depth == 0 {
            return Err(RECURSION_LIMIT_REACHED);
        }
        match wire {
            VARINT => {
                self.read_varint()?;
            }
            FIXED64 => {
                self.take(8)?;
            }
            LENGTH_DELIMITED => {
                self.length_delimited()?;
            }
            START_GROUP => loop {
                let (inner_tag, inner_wire) = self.key()?.ok_or(INVALID_VARINT)?;
                if inner_wire == END_GROUP {
                    if inner_tag != tag {
                        return Err(END_GROUP_TAG);
                    }
                    break;
                }
                self.skip_at(inner_tag, inner_wire, depth - 1)?;
            },
            END_GROUP => return Err(END_GROUP_TAG),
            _ => {
                self.take(4)?;
            }
        }
        Ok(())
    }

    fn length_delimited(&mut self) -> Result<&'a [u8], WireError> {
        let length = self.read_varint()?;
        let length = usize::try_from(length).map_err(|_| UNDERFLOW)?;
        self.take(length)
    }

    fn take(&mut self, length: usize) -> Result<&'a [u8], WireError> {
        if length > self.rest.len() {
            return Err(UNDERFLOW);
        }
        let (taken, rest) = self.rest.split_at(length);
        self.rest = rest;
        Ok(taken)
    }

    /// A base-128 varint of at most ten bytes whose value fits in 64 bits. Most of a record's
    /// (its keys, its lengths, small numbers) are one byte, read here without the loop.
    #[inline(always)]
    fn read_varint(&mut self) -> Result<u64, WireError> {
        match self.rest.split_first() {
            Some((&byte, rest)) if byte < 0x80 => {
                self.rest = rest;
                Ok(u64::from(byte))
            }
            _ => self.read_long_varint(),
        }
    }

    fn read_long_varint(&mut self) -> Result<u64, WireError> {
        let mut value = 0_u64;
        for (index, &byte) in self.rest.iter().take(10).enumerate() {
            if index == 9 && byte > 1 {
                return Err(INVALID_VARINT);
            }
            value |= u64::from(byte & 0x7f) << (7 * index);
            if byte < 0x80 {
                self.rest = &self.rest[index + 1..];
                return Ok(value);
            }
        }
        Err(INVALID_VARINT)
    }
}

fn expect(wire: u32, expected: u32) -> Result<(), WireError> {
    if wire == expected {
        Ok(())
    } else {
        Err(WRONG_WIRE_TYPE)
    }
}
