//! The serde bridge between Rust types and [`PyValue`]: what lets the typed proxies
//! ([`DictProxy<K, V>`](crate::manager::DictProxy), ...) work on a CPython manager server,
//! whose objects hold Python values.
//!
//! | Rust (serde) | Python |
//! | --- | --- |
//! | `bool` | `bool` |
//! | integers | `int` (a Python `int` past the Rust type's range is refused) |
//! | `f32`, `f64` | `float` (a Python `int` reads as a float too) |
//! | `char`, `&str`, `String` | `str` |
//! | bytes (`serde_bytes`) | `bytes` (`bytearray` reads as bytes too) |
//! | `None`, `()`, unit structs | `None` |
//! | `Some(v)`, newtype structs | `v` |
//! | sequences (`Vec`, sets) | `list` (`tuple`, `set`, `frozenset` read as sequences too) |
//! | tuples, tuple structs | `tuple` |
//! | maps, structs | `dict` (a struct's keys are its field names) |
//! | unit enum variants | `str` (the variant's name) |
//!
//! Enum variants holding data have no Python form and are refused, as is nesting deeper than
//! the pickle decoder's depth limit ([`pickle::MAX_DEPTH`](super::pickle::MAX_DEPTH)). Every
//! refusal is [`ManagerError::PyConversion`]; nothing here panics on any value.

use std::fmt;

use serde::de::{self, DeserializeOwned, IntoDeserializer, Visitor};
use serde::ser::{self, Impossible, Serialize};

use super::pickle::MAX_DEPTH;
use super::value::PyValue;
use crate::error::ManagerError;

/// `value` as a Python value.
pub fn to_py<T: Serialize + ?Sized>(value: &T) -> Result<PyValue, ManagerError> {
    value
        .serialize(ToPy { depth: 0 })
        .map_err(|e| ManagerError::PyConversion(e.0))
}

/// `value` as a `T`.
pub fn from_py<T: DeserializeOwned>(value: PyValue) -> Result<T, ManagerError> {
    T::deserialize(FromPy { value, depth: 0 }).map_err(|e| ManagerError::PyConversion(e.0))
}

/// A conversion's error, as serde builds it.
#[derive(Debug)]
pub struct Refused(String);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

impl ser::Error for Refused {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Refused(msg.to_string())
    }
}

impl de::Error for Refused {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Refused(msg.to_string())
    }
}

fn too_deep() -> Refused {
    Refused(format!("value nested deeper than {MAX_DEPTH} levels"))
}

/// One level deeper than `depth`, or the refusal past the limit.
fn deeper(depth: usize) -> Result<usize, Refused> {
    if depth >= MAX_DEPTH {
        Err(too_deep())
    } else {
        Ok(depth + 1)
    }
}

/// Serializes into a [`PyValue`]; `depth` is how many containers enclose the value.
struct ToPy {
    depth: usize,
}

/// A list or tuple being built.
struct Seq {
    items: Vec<PyValue>,
    tuple: bool,
    depth: usize,
}

/// A dict being built (a map or a struct).
struct Map {
    entries: Vec<(PyValue, PyValue)>,
    key: Option<PyValue>,
    depth: usize,
}

fn with_data(variant: &str) -> Refused {
    Refused(format!(
        "enum variant `{variant}` holds data, which has no Python form here (only unit \
         variants do, as their name)"
    ))
}

impl ser::Serializer for ToPy {
    type Ok = PyValue;
    type Error = Refused;
    type SerializeSeq = Seq;
    type SerializeTuple = Seq;
    type SerializeTupleStruct = Seq;
    type SerializeTupleVariant = Impossible<PyValue, Refused>;
    type SerializeMap = Map;
    type SerializeStruct = Map;
    type SerializeStructVariant = Impossible<PyValue, Refused>;

    fn serialize_bool(self, v: bool) -> Result<PyValue, Refused> {
        Ok(PyValue::Bool(v))
    }
    fn serialize_i8(self, v: i8) -> Result<PyValue, Refused> {
        Ok(PyValue::Int(v.into()))
    }
    fn serialize_i16(self, v: i16) -> Result<PyValue, Refused> {
        Ok(PyValue::Int(v.into()))
    }
    fn serialize_i32(self, v: i32) -> Result<PyValue, Refused> {
        Ok(PyValue::Int(v.into()))
    }
    fn serialize_i64(self, v: i64) -> Result<PyValue, Refused> {
        Ok(PyValue::Int(v.into()))
    }
    fn serialize_i128(self, v: i128) -> Result<PyValue, Refused> {
        Ok(PyValue::Int(v))
    }
    fn serialize_u8(self, v: u8) -> Result<PyValue, Refused> {
        Ok(PyValue::Int(v.into()))
    }
    fn serialize_u16(self, v: u16) -> Result<PyValue, Refused> {
        Ok(PyValue::Int(v.into()))
    }
    fn serialize_u32(self, v: u32) -> Result<PyValue, Refused> {
        Ok(PyValue::Int(v.into()))
    }
    fn serialize_u64(self, v: u64) -> Result<PyValue, Refused> {
        Ok(PyValue::Int(v.into()))
    }
    fn serialize_u128(self, v: u128) -> Result<PyValue, Refused> {
        i128::try_from(v).map(PyValue::Int).map_err(|_| {
            Refused(format!(
                "{v} is past the 128-bit signed range of PyValue::Int"
            ))
        })
    }
    fn serialize_f32(self, v: f32) -> Result<PyValue, Refused> {
        Ok(PyValue::Float(v.into()))
    }
    fn serialize_f64(self, v: f64) -> Result<PyValue, Refused> {
        Ok(PyValue::Float(v))
    }
    fn serialize_char(self, v: char) -> Result<PyValue, Refused> {
        Ok(PyValue::Str(v.to_string()))
    }
    fn serialize_str(self, v: &str) -> Result<PyValue, Refused> {
        Ok(PyValue::Str(v.to_string()))
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<PyValue, Refused> {
        Ok(PyValue::Bytes(v.to_vec()))
    }
    fn serialize_none(self) -> Result<PyValue, Refused> {
        Ok(PyValue::None)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<PyValue, Refused> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<PyValue, Refused> {
        Ok(PyValue::None)
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<PyValue, Refused> {
        Ok(PyValue::None)
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<PyValue, Refused> {
        Ok(PyValue::Str(variant.to_string()))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<PyValue, Refused> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _value: &T,
    ) -> Result<PyValue, Refused> {
        Err(with_data(variant))
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<Seq, Refused> {
        Seq::new(self.depth, len, false)
    }
    fn serialize_tuple(self, len: usize) -> Result<Seq, Refused> {
        Seq::new(self.depth, Some(len), true)
    }
    fn serialize_tuple_struct(self, _name: &'static str, len: usize) -> Result<Seq, Refused> {
        Seq::new(self.depth, Some(len), true)
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant, Refused> {
        Err(with_data(variant))
    }
    fn serialize_map(self, len: Option<usize>) -> Result<Map, Refused> {
        Map::new(self.depth, len)
    }
    fn serialize_struct(self, _name: &'static str, len: usize) -> Result<Map, Refused> {
        Map::new(self.depth, Some(len))
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant, Refused> {
        Err(with_data(variant))
    }
}

/// Room reserved up front for a container's items: what the length hint says, within reason
/// (the items themselves are what take memory).
fn room(len: Option<usize>) -> usize {
    len.unwrap_or(0).min(4096)
}

impl Seq {
    fn new(depth: usize, len: Option<usize>, tuple: bool) -> Result<Seq, Refused> {
        Ok(Seq {
            items: Vec::with_capacity(room(len)),
            tuple,
            depth: deeper(depth)?,
        })
    }

    fn push<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Refused> {
        self.items
            .push(value.serialize(ToPy { depth: self.depth })?);
        Ok(())
    }

    fn done(self) -> PyValue {
        if self.tuple {
            PyValue::Tuple(self.items)
        } else {
            PyValue::List(self.items)
        }
    }
}

/// The serde traits that hand `Seq` one value after another, all alike.
macro_rules! seq_of_values {
    ($($trait:ident::$method:ident),*) => {$(
        impl ser::$trait for Seq {
            type Ok = PyValue;
            type Error = Refused;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Refused> {
                self.push(value)
            }
            fn end(self) -> Result<PyValue, Refused> {
                Ok(self.done())
            }
        }
    )*};
}

seq_of_values!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field
);

impl Map {
    fn new(depth: usize, len: Option<usize>) -> Result<Map, Refused> {
        Ok(Map {
            entries: Vec::with_capacity(room(len)),
            key: None,
            depth: deeper(depth)?,
        })
    }

    fn value<T: Serialize + ?Sized>(&self, value: &T) -> Result<PyValue, Refused> {
        value.serialize(ToPy { depth: self.depth })
    }
}

impl ser::SerializeMap for Map {
    type Ok = PyValue;
    type Error = Refused;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Refused> {
        self.key = Some(self.value(key)?);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Refused> {
        let key = self
            .key
            .take()
            .ok_or_else(|| Refused("a map value without its key".into()))?;
        let value = self.value(value)?;
        self.entries.push((key, value));
        Ok(())
    }
    fn end(self) -> Result<PyValue, Refused> {
        Ok(PyValue::Dict(self.entries))
    }
}

impl ser::SerializeStruct for Map {
    type Ok = PyValue;
    type Error = Refused;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        name: &'static str,
        value: &T,
    ) -> Result<(), Refused> {
        let value = self.value(value)?;
        self.entries.push((PyValue::Str(name.to_string()), value));
        Ok(())
    }
    fn end(self) -> Result<PyValue, Refused> {
        Ok(PyValue::Dict(self.entries))
    }
}

/// Deserializes from a [`PyValue`]; `depth` is how many containers enclose it.
struct FromPy {
    value: PyValue,
    depth: usize,
}

/// The items of a Python sequence, for `visit_seq`.
struct SeqOf {
    items: std::vec::IntoIter<PyValue>,
    depth: usize,
}

/// The entries of a Python dict, for `visit_map`.
struct MapOf {
    entries: std::vec::IntoIter<(PyValue, PyValue)>,
    value: Option<PyValue>,
    depth: usize,
}

impl<'de> de::SeqAccess<'de> for SeqOf {
    type Error = Refused;
    fn next_element_seed<S: de::DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, Refused> {
        match self.items.next() {
            Some(value) => seed
                .deserialize(FromPy {
                    value,
                    depth: self.depth,
                })
                .map(Some),
            None => Ok(None),
        }
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

impl<'de> de::MapAccess<'de> for MapOf {
    type Error = Refused;
    fn next_key_seed<S: de::DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, Refused> {
        match self.entries.next() {
            Some((key, value)) => {
                self.value = Some(value);
                seed.deserialize(FromPy {
                    value: key,
                    depth: self.depth,
                })
                .map(Some)
            }
            None => Ok(None),
        }
    }
    fn next_value_seed<S: de::DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<S::Value, Refused> {
        let value = self
            .value
            .take()
            .ok_or_else(|| Refused("a dict value asked for before its key".into()))?;
        seed.deserialize(FromPy {
            value,
            depth: self.depth,
        })
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

impl FromPy {
    fn seq<'de, V: Visitor<'de>>(
        items: Vec<PyValue>,
        depth: usize,
        visitor: V,
    ) -> Result<V::Value, Refused> {
        let mut access = SeqOf {
            items: items.into_iter(),
            depth: deeper(depth)?,
        };
        let value = visitor.visit_seq(&mut access)?;
        match access.items.len() {
            0 => Ok(value),
            n => Err(Refused(format!("{n} items more than the Rust type takes"))),
        }
    }

    fn unexpected(&self, visitor: &dyn de::Expected) -> Refused {
        Refused(format!(
            "a Python {} where {visitor} was expected",
            self.value.type_name()
        ))
    }
}

impl<'de> de::Deserializer<'de> for FromPy {
    type Error = Refused;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
        let depth = self.depth;
        match self.value {
            PyValue::None => visitor.visit_unit(),
            PyValue::Bool(b) => visitor.visit_bool(b),
            PyValue::Int(i) => match (i64::try_from(i), u64::try_from(i)) {
                (Ok(i), _) => visitor.visit_i64(i),
                (_, Ok(u)) => visitor.visit_u64(u),
                _ => visitor.visit_i128(i),
            },
            PyValue::Float(f) => visitor.visit_f64(f),
            PyValue::Str(s) => visitor.visit_string(s),
            PyValue::Bytes(b) | PyValue::ByteArray(b) => visitor.visit_byte_buf(b),
            PyValue::List(items)
            | PyValue::Tuple(items)
            | PyValue::Set(items)
            | PyValue::FrozenSet(items) => Self::seq(items, depth, visitor),
            PyValue::Dict(entries) => {
                let mut access = MapOf {
                    entries: entries.into_iter(),
                    value: None,
                    depth: deeper(depth)?,
                };
                visitor.visit_map(&mut access)
            }
            other => Err(Refused(format!(
                "a Python {} has no Rust form here",
                other.type_name()
            ))),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
        match self.value {
            PyValue::None => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
        match self.value {
            PyValue::None => visitor.visit_unit(),
            _ => Err(self.unexpected(&visitor)),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Refused> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Refused> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Refused> {
        match self.value {
            PyValue::Str(s) => visitor.visit_enum(s.into_deserializer()),
            other => Err(Refused(format!(
                "a Python {} where enum `{name}` was expected (only unit variants, as a str, \
                 have a Python form)",
                other.type_name()
            ))),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        seq tuple tuple_struct map struct identifier
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Job {
        name: String,
        tries: u8,
        tags: Vec<String>,
        due: Option<f64>,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Colour {
        Red,
        Rgb(u8, u8, u8),
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Meters(u32);

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Unit;

    fn round_trip<T: Serialize + DeserializeOwned + PartialEq + fmt::Debug>(value: T) -> PyValue {
        let py = to_py(&value).unwrap();
        assert_eq!(from_py::<T>(py.clone()).unwrap(), value, "through {py:?}");
        py
    }

    fn refused(e: ManagerError) -> String {
        match e {
            ManagerError::PyConversion(m) => m,
            other => panic!("not a conversion error: {other:?}"),
        }
    }

    #[test]
    fn plain_values_are_their_python_values() {
        assert_eq!(
            round_trip("héllo".to_string()),
            PyValue::Str("héllo".into())
        );
        assert_eq!(round_trip(-7i64), PyValue::Int(-7));
        assert_eq!(round_trip(u64::MAX), PyValue::Int(u64::MAX.into()));
        assert_eq!(round_trip(i128::MIN), PyValue::Int(i128::MIN));
        assert_eq!(round_trip(2.5f64), PyValue::Float(2.5));
        assert_eq!(round_trip(true), PyValue::Bool(true));
        assert_eq!(round_trip('x'), PyValue::Str("x".into()));
        assert_eq!(round_trip(None::<u8>), PyValue::None);
        assert_eq!(round_trip(Some(3u8)), PyValue::Int(3));
        assert_eq!(round_trip(()), PyValue::None);
        assert_eq!(round_trip(Unit), PyValue::None);
        assert_eq!(round_trip(Meters(4)), PyValue::Int(4));
        assert_eq!(
            round_trip(serde_bytes::ByteBuf::from(vec![0u8, 255])),
            PyValue::Bytes(vec![0, 255])
        );
        assert_eq!(round_trip(Colour::Red), PyValue::Str("Red".into()));
    }

    #[test]
    fn containers_are_lists_tuples_and_dicts() {
        assert_eq!(
            round_trip(vec![1u32, 2]),
            PyValue::List(vec![PyValue::Int(1), PyValue::Int(2)])
        );
        assert_eq!(
            round_trip((1u8, "a".to_string())),
            PyValue::Tuple(vec![PyValue::Int(1), PyValue::Str("a".into())])
        );
        let map: BTreeMap<String, Vec<i32>> = [("a".into(), vec![1]), ("b".into(), vec![])].into();
        assert_eq!(
            round_trip(map),
            PyValue::Dict(vec![
                ("a".into(), PyValue::List(vec![PyValue::Int(1)])),
                ("b".into(), PyValue::List(vec![])),
            ])
        );
        let job = Job {
            name: "build".into(),
            tries: 2,
            tags: vec!["ci".into()],
            due: None,
        };
        let py = round_trip(job);
        let PyValue::Dict(entries) = py else {
            panic!("a struct is a dict")
        };
        assert_eq!(entries[0], ("name".into(), "build".into()));
        // What a Python program would write reads back: ints as floats, tuples and sets as
        // sequences, integer keys, bytearrays as bytes.
        assert_eq!(from_py::<f64>(PyValue::Int(3)).unwrap(), 3.0);
        assert_eq!(
            from_py::<Vec<u8>>(PyValue::Set(vec![PyValue::Int(1)])).unwrap(),
            vec![1]
        );
        let m: HashMap<i64, bool> = from_py(PyValue::Dict(vec![(
            PyValue::Int(-1),
            PyValue::Bool(false),
        )]))
        .unwrap();
        assert_eq!(m, [(-1, false)].into());
        let b: serde_bytes::ByteBuf = from_py(PyValue::ByteArray(vec![1])).unwrap();
        assert_eq!(b.into_vec(), vec![1]);
    }

    #[test]
    fn values_that_do_not_fit_are_refused_by_name() {
        let m = refused(from_py::<u8>(PyValue::Int(300)).unwrap_err());
        assert!(m.contains("300"), "{m}");
        refused(from_py::<u64>(PyValue::Int(-1)).unwrap_err());
        refused(from_py::<i64>(PyValue::Int(i128::MAX)).unwrap_err());
        let m = refused(from_py::<u64>(PyValue::Str("7".into())).unwrap_err());
        assert!(m.contains("string"), "{m}");
        refused(from_py::<String>(PyValue::None).unwrap_err());
        refused(from_py::<(u8, u8)>(PyValue::Tuple(vec![PyValue::Int(1)])).unwrap_err());
        let m = refused(
            from_py::<(u8,)>(PyValue::Tuple(vec![PyValue::Int(1), PyValue::Int(2)])).unwrap_err(),
        );
        assert!(m.contains("more"), "{m}");
        refused(from_py::<Job>(PyValue::Dict(vec![])).unwrap_err());
        let m = refused(from_py::<Colour>(PyValue::Int(0)).unwrap_err());
        assert!(m.contains("Colour"), "{m}");
        refused(from_py::<Colour>(PyValue::Str("Blue".into())).unwrap_err());
        let m = refused(from_py::<Colour>(PyValue::Str("Rgb".into())).unwrap_err());
        assert!(!m.is_empty());
        let token = PyValue::Slice(Box::new([PyValue::None, PyValue::None, PyValue::None]));
        let m = refused(from_py::<Vec<u8>>(token).unwrap_err());
        assert!(m.contains("slice"), "{m}");
    }

    #[test]
    fn rust_values_without_a_python_form_are_refused() {
        let m = refused(to_py(&Colour::Rgb(1, 2, 3)).unwrap_err());
        assert!(m.contains("Rgb"), "{m}");
        refused(to_py(&u128::MAX).unwrap_err());
        // Inside a container too, and the whole value is refused.
        refused(to_py(&vec![Colour::Red, Colour::Rgb(0, 0, 0)]).unwrap_err());
    }

    #[test]
    fn nesting_is_bounded_both_ways() {
        #[derive(Debug, Deserialize, Serialize, PartialEq)]
        struct Nest(Vec<Nest>);
        fn nest(levels: usize) -> (Nest, PyValue) {
            let (mut rust, mut py) = (Nest(vec![]), PyValue::List(vec![]));
            for _ in 1..levels {
                rust = Nest(vec![rust]);
                py = PyValue::List(vec![py]);
            }
            (rust, py)
        }
        // MAX_DEPTH containers are fine, one more is refused.
        let (rust, py) = nest(MAX_DEPTH);
        assert_eq!(to_py(&rust).unwrap(), py);
        assert_eq!(from_py::<Nest>(py).unwrap(), rust);
        let (rust, py) = nest(MAX_DEPTH + 1);
        let m = refused(to_py(&rust).unwrap_err());
        assert!(m.contains("deeper"), "{m}");
        let m = refused(from_py::<Nest>(py).unwrap_err());
        assert!(m.contains("deeper"), "{m}");
    }
}
