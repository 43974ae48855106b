//! Postcard, with the words of custom errors kept.
//!
//! Postcard's error type drops the message given to `serde::ser::Error::custom` and
//! `serde::de::Error::custom`: a type whose own serde code refuses a value ("negative
//! amount", "unknown version 3") would only say "custom error". The serializer and
//! deserializer here sit between a value's serde code and postcard's: postcard still writes
//! and reads every byte, but what the value's code sees is an error type of our own,
//! [`Failure`], which keeps the words. Everything is generic and inlined, and postcard's own
//! code writes and reads the bytes: the layer costs a few tens of instructions per value.

use std::fmt;

use postcard::de_flavors::Slice;
use postcard::ser_flavors::Flavor;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};
use serde::ser::{self, Serialize};

/// Why a value did not go through: postcard's own error, or the words of a serde
/// implementation that refused it.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Postcard's error: a full buffer, bytes that are not a value of the type, ...
    Format(postcard::Error),
    /// The message a serde implementation gave (boxed: the error stays two words).
    Custom(Box<str>),
}

impl From<postcard::Error> for Failure {
    #[inline]
    fn from(e: postcard::Error) -> Self {
        Failure::Format(e)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Format(e) => e.fmt(f),
            Failure::Custom(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for Failure {}

impl ser::Error for Failure {
    fn custom<T: fmt::Display>(message: T) -> Self {
        Failure::Custom(message.to_string().into())
    }
}

impl de::Error for Failure {
    fn custom<T: fmt::Display>(message: T) -> Self {
        Failure::Custom(message.to_string().into())
    }
}

/// Serializes `value` into `flavor` and gives back the flavor's output.
#[inline]
pub(crate) fn serialize<T: Serialize + ?Sized, F: Flavor>(
    value: &T,
    flavor: F,
) -> Result<F::Output, Failure> {
    let mut serializer = postcard::Serializer { output: flavor };
    value.serialize(Ser(&mut serializer))?;
    Ok(serializer.output.finalize()?)
}

/// Deserializes a `T` from the start of `bytes`; gives back the bytes after it.
#[inline]
pub(crate) fn deserialize<'de, T: Deserialize<'de>>(
    bytes: &'de [u8],
) -> Result<(T, &'de [u8]), Failure> {
    let mut deserializer = postcard::Deserializer::from_bytes(bytes);
    let value = T::deserialize(De {
        inner: &mut deserializer,
        size: bytes.len(),
    })?;
    Ok((value, deserializer.finalize()?))
}

/// Postcard's serializer, seen through [`Failure`].
struct Ser<'a, F: Flavor>(&'a mut postcard::Serializer<F>);

/// Methods that write one value with no value of the caller's inside: postcard's own.
macro_rules! leaves {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {$(
        #[inline]
        fn $method(self, $($arg: $ty),*) -> Result<(), Failure> {
            Ok(self.0.$method($($arg),*)?)
        }
    )*};
}

impl<'a, F: Flavor> ser::Serializer for Ser<'a, F> {
    type Ok = ();
    type Error = Failure;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    fn is_human_readable(&self) -> bool {
        false
    }

    leaves! {
        serialize_bool(v: bool);
        serialize_i8(v: i8);
        serialize_i16(v: i16);
        serialize_i32(v: i32);
        serialize_i64(v: i64);
        serialize_i128(v: i128);
        serialize_u8(v: u8);
        serialize_u16(v: u16);
        serialize_u32(v: u32);
        serialize_u64(v: u64);
        serialize_u128(v: u128);
        serialize_f32(v: f32);
        serialize_f64(v: f64);
        serialize_char(v: char);
        serialize_str(v: &str);
        serialize_bytes(v: &[u8]);
        serialize_none();
        serialize_unit();
        serialize_unit_struct(name: &'static str);
        serialize_unit_variant(name: &'static str, index: u32, variant: &'static str);
    }

    #[inline]
    fn collect_str<T: fmt::Display + ?Sized>(self, value: &T) -> Result<(), Failure> {
        Ok(self.0.collect_str(value)?)
    }

    // Around a value of the caller's: postcard writes what comes before it (given a unit,
    // which is no bytes), then the value goes through this serializer.

    #[inline]
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Failure> {
        self.0.serialize_some(&())?;
        value.serialize(self)
    }

    #[inline]
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result<(), Failure> {
        self.0.serialize_newtype_struct(name, &())?;
        value.serialize(self)
    }

    #[inline]
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Failure> {
        self.0
            .serialize_newtype_variant(name, index, variant, &())?;
        value.serialize(self)
    }

    // Compounds: postcard writes their head (a length, a variant index), then each part
    // goes through this serializer.

    #[inline]
    fn serialize_seq(self, len: Option<usize>) -> Result<Self, Failure> {
        self.0.serialize_seq(len)?;
        Ok(self)
    }

    #[inline]
    fn serialize_tuple(self, len: usize) -> Result<Self, Failure> {
        self.0.serialize_tuple(len)?;
        Ok(self)
    }

    #[inline]
    fn serialize_tuple_struct(self, name: &'static str, len: usize) -> Result<Self, Failure> {
        self.0.serialize_tuple_struct(name, len)?;
        Ok(self)
    }

    #[inline]
    fn serialize_tuple_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self, Failure> {
        self.0.serialize_tuple_variant(name, index, variant, len)?;
        Ok(self)
    }

    #[inline]
    fn serialize_map(self, len: Option<usize>) -> Result<Self, Failure> {
        self.0.serialize_map(len)?;
        Ok(self)
    }

    #[inline]
    fn serialize_struct(self, name: &'static str, len: usize) -> Result<Self, Failure> {
        self.0.serialize_struct(name, len)?;
        Ok(self)
    }

    #[inline]
    fn serialize_struct_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self, Failure> {
        self.0.serialize_struct_variant(name, index, variant, len)?;
        Ok(self)
    }
}

/// The compound traits: each part through this serializer; postcard ends nothing.
macro_rules! compounds {
    ($($trait:ident { $($method:ident($($key:ident: $kty:ty),*);)* })*) => {$(
        impl<F: Flavor> ser::$trait for Ser<'_, F> {
            type Ok = ();
            type Error = Failure;

            $(
                #[inline]
                fn $method<T: Serialize + ?Sized>(
                    &mut self,
                    $($key: $kty,)*
                    value: &T,
                ) -> Result<(), Failure> {
                    $(let _ = $key;)*
                    value.serialize(Ser(&mut *self.0))
                }
            )*

            #[inline]
            fn end(self) -> Result<(), Failure> {
                Ok(())
            }
        }
    )*};
}

compounds! {
    SerializeSeq { serialize_element(); }
    SerializeTuple { serialize_element(); }
    SerializeTupleStruct { serialize_field(); }
    SerializeTupleVariant { serialize_field(); }
    SerializeMap { serialize_key(); serialize_value(); }
    SerializeStruct { serialize_field(key: &'static str); }
    SerializeStructVariant { serialize_field(key: &'static str); }
}

/// Postcard's deserializer over a byte slice, seen through [`Failure`].
struct De<'a, 'de> {
    inner: &'a mut postcard::Deserializer<'de, Slice<'de>>,
    /// The size of the whole input: no sequence in it can hold more (non-empty) items.
    size: usize,
}

impl<'de> De<'_, 'de> {
    #[inline]
    fn reborrow(&mut self) -> De<'_, 'de> {
        De {
            inner: &mut *self.inner,
            size: self.size,
        }
    }

    /// Reads a value of a type of serde's own (whose code raises no custom error) with
    /// postcard's deserializer.
    #[inline]
    fn read<T: Deserialize<'de>>(&mut self) -> Result<T, Failure> {
        Ok(T::deserialize(&mut *self.inner)?)
    }
}

/// Methods that read one value with no value of the caller's inside: postcard reads it, the
/// caller's visitor gets it (and may refuse it in its own words).
macro_rules! scalars {
    ($($method:ident => $ty:ty, $visit:ident;)*) => {$(
        #[inline]
        fn $method<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Failure> {
            visitor.$visit(self.read::<$ty>()?)
        }
    )*};
}

/// Methods postcard refuses (it is not self-describing): its own error.
macro_rules! refused {
    ($($method:ident;)*) => {$(
        #[inline]
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Failure> {
            Ok(de::Deserializer::$method(&mut *self.inner, visitor)?)
        }
    )*};
}

impl<'de> de::Deserializer<'de> for De<'_, 'de> {
    type Error = Failure;

    fn is_human_readable(&self) -> bool {
        false
    }

    scalars! {
        deserialize_bool => bool, visit_bool;
        deserialize_i8 => i8, visit_i8;
        deserialize_i16 => i16, visit_i16;
        deserialize_i32 => i32, visit_i32;
        deserialize_i64 => i64, visit_i64;
        deserialize_i128 => i128, visit_i128;
        deserialize_u8 => u8, visit_u8;
        deserialize_u16 => u16, visit_u16;
        deserialize_u32 => u32, visit_u32;
        deserialize_u64 => u64, visit_u64;
        deserialize_u128 => u128, visit_u128;
        deserialize_f32 => f32, visit_f32;
        deserialize_f64 => f64, visit_f64;
        deserialize_char => char, visit_char;
        deserialize_str => &'de str, visit_borrowed_str;
        deserialize_string => &'de str, visit_str;
        deserialize_bytes => &'de [u8], visit_borrowed_bytes;
        deserialize_byte_buf => &'de [u8], visit_bytes;
    }

    refused! {
        deserialize_any;
        deserialize_identifier;
        deserialize_ignored_any;
    }

    #[inline]
    fn deserialize_option<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Failure> {
        // Postcard reads the tag (and a unit, which is no bytes).
        match self.read::<Option<()>>()? {
            None => visitor.visit_none(),
            Some(()) => visitor.visit_some(self),
        }
    }

    #[inline]
    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Failure> {
        visitor.visit_unit()
    }

    #[inline]
    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Failure> {
        visitor.visit_unit()
    }

    #[inline]
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Failure> {
        visitor.visit_newtype_struct(self)
    }

    #[inline]
    fn deserialize_seq<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Failure> {
        let len = self.read::<usize>()?;
        visitor.visit_seq(Items { de: self, len })
    }

    #[inline]
    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Failure> {
        visitor.visit_seq(Items { de: self, len })
    }

    #[inline]
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Failure> {
        self.deserialize_tuple(len, visitor)
    }

    #[inline]
    fn deserialize_map<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Failure> {
        let len = self.read::<usize>()?;
        visitor.visit_map(Items { de: self, len })
    }

    #[inline]
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Failure> {
        self.deserialize_tuple(fields.len(), visitor)
    }

    #[inline]
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Failure> {
        visitor.visit_enum(self)
    }
}

/// The items of a sequence or tuple, or the entries of a map: `len` more to read.
struct Items<'a, 'de> {
    de: De<'a, 'de>,
    len: usize,
}

impl Items<'_, '_> {
    /// Takes one item, false when there are no more.
    #[inline]
    fn take(&mut self) -> bool {
        let more = self.len > 0;
        self.len = self.len.saturating_sub(1);
        more
    }

    /// No more items than bytes left: a hostile length is no reason to allocate.
    #[inline]
    fn hint(&self) -> Option<usize> {
        (self.len <= self.de.size).then_some(self.len)
    }
}

impl<'de> de::SeqAccess<'de> for Items<'_, 'de> {
    type Error = Failure;

    #[inline]
    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, Failure> {
        if !self.take() {
            return Ok(None);
        }
        seed.deserialize(self.de.reborrow()).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        self.hint()
    }
}

impl<'de> de::MapAccess<'de> for Items<'_, 'de> {
    type Error = Failure;

    #[inline]
    fn next_key_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, Failure> {
        if !self.take() {
            return Ok(None);
        }
        seed.deserialize(self.de.reborrow()).map(Some)
    }

    #[inline]
    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, Failure> {
        seed.deserialize(self.de.reborrow())
    }

    fn size_hint(&self) -> Option<usize> {
        self.hint()
    }
}

impl<'de> de::EnumAccess<'de> for De<'_, 'de> {
    type Error = Failure;
    type Variant = Self;

    #[inline]
    fn variant_seed<S: DeserializeSeed<'de>>(
        mut self,
        seed: S,
    ) -> Result<(S::Value, Self), Failure> {
        let index = self.read::<u32>()?;
        let value = seed.deserialize(IntoDeserializer::<Failure>::into_deserializer(index))?;
        Ok((value, self))
    }
}

impl<'de> de::VariantAccess<'de> for De<'_, 'de> {
    type Error = Failure;

    #[inline]
    fn unit_variant(self) -> Result<(), Failure> {
        Ok(())
    }

    #[inline]
    fn newtype_variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<S::Value, Failure> {
        seed.deserialize(self)
    }

    #[inline]
    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Failure> {
        de::Deserializer::deserialize_tuple(self, len, visitor)
    }

    #[inline]
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Failure> {
        de::Deserializer::deserialize_tuple(self, fields.len(), visitor)
    }
}
