//! A check that a value has a JSON form: `serde_json` writes a NaN or an
//! infinite float as `null`, which a caller (and the host's output schema,
//! where the field may be null) would take for "no value". The Python SDK
//! refuses such a result (`json.dumps(..., allow_nan=False)`); so does this
//! one, naming where the number is.

use std::fmt;

use serde::Serialize;
use serde::ser;

/// A float that is NaN or infinite, and where it is (`.stats.mean`,
/// `[3]`, `.` for the value itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NotFinite {
    /// Path segments, innermost first.
    path: Vec<String>,
    /// A failure of the value's own `Serialize` (which serde_json would
    /// report too).
    custom: Option<String>,
}

impl NotFinite {
    fn under(mut self, segment: impl FnOnce() -> String) -> NotFinite {
        self.path.push(segment());
        self
    }
}

impl fmt::Display for NotFinite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(custom) = &self.custom {
            return f.write_str(custom);
        }
        let path: String = self.path.iter().rev().map(String::as_str).collect();
        let path = if path.is_empty() { "." } else { &path };
        write!(
            f,
            "the number at {path} is not finite (NaN or infinity), which JSON cannot hold"
        )
    }
}

impl std::error::Error for NotFinite {}

impl ser::Error for NotFinite {
    fn custom<T: fmt::Display>(message: T) -> NotFinite {
        NotFinite {
            path: Vec::new(),
            custom: Some(message.to_string()),
        }
    }
}

/// Whether `value` serialises with every float finite.
///
/// # Errors
/// The first float that is not, by path.
pub(crate) fn check<T: Serialize + ?Sized>(value: &T) -> Result<(), NotFinite> {
    value.serialize(Check)
}

fn float(value: f64) -> Result<(), NotFinite> {
    if value.is_finite() {
        Ok(())
    } else {
        Err(NotFinite {
            path: Vec::new(),
            custom: None,
        })
    }
}

/// A map key as a path segment, as serde_json writes the key (a number
/// or a bool as its text): `.name` for a key of letters, digits and `_`,
/// `["…"]` (JSON-escaped) for any other.
fn key_segment<K: Serialize + ?Sized>(key: &K) -> String {
    let text = match serde_json::to_value(key) {
        Ok(serde_json::Value::String(key)) => key,
        Ok(other @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
            other.to_string()
        }
        _ => return "[?]".to_owned(),
    };
    if !text.is_empty() && text.chars().all(|c| c.is_alphanumeric() || c == '_') {
        format!(".{text}")
    } else {
        format!("[{}]", serde_json::Value::String(text))
    }
}

/// The serializer that only looks at floats.
#[derive(Clone, Copy)]
struct Check;

/// A sequence, tuple, map or struct being checked: the index of the next
/// element, and the enum variant it is the content of (serde_json writes
/// it as `{"Variant": ...}`).
struct Compound {
    index: usize,
    variant: Option<&'static str>,
    /// The key a map's next value is under, when the key came on its own
    /// (`serialize_key`, as a flattened enum's variant does).
    key: Option<String>,
}

impl Compound {
    fn new(variant: Option<&'static str>) -> Compound {
        Compound {
            index: 0,
            variant,
            key: None,
        }
    }

    /// `error`, found at `segment` of this compound.
    fn found(&self, error: NotFinite, segment: impl FnOnce() -> String) -> NotFinite {
        let error = error.under(segment);
        match self.variant {
            Some(variant) => error.under(|| format!(".{variant}")),
            None => error,
        }
    }

    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), NotFinite> {
        let index = self.index;
        self.index += 1;
        value
            .serialize(Check)
            .map_err(|e| self.found(e, || format!("[{index}]")))
    }

    fn field<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<(), NotFinite> {
        value
            .serialize(Check)
            .map_err(|e| self.found(e, || format!(".{key}")))
    }
}

impl ser::Serializer for Check {
    type Ok = ();
    type Error = NotFinite;
    type SerializeSeq = Compound;
    type SerializeTuple = Compound;
    type SerializeTupleStruct = Compound;
    type SerializeTupleVariant = Compound;
    type SerializeMap = Compound;
    type SerializeStruct = Compound;
    type SerializeStructVariant = Compound;

    fn serialize_bool(self, _: bool) -> Result<(), NotFinite> {
        Ok(())
    }
    fn serialize_i8(self, _: i8) -> Result<(), NotFinite> {
        Ok(())
    }
    fn serialize_i16(self, _: i16) -> Result<(), NotFinite> {
        Ok(())
    }
    fn serialize_i32(self, _: i32) -> Result<(), NotFinite> {
        Ok(())
    }
    fn serialize_i64(self, _: i64) -> Result<(), NotFinite> {
        Ok(())
    }
    fn serialize_i128(self, _: i128) -> Result<(), NotFinite> {
        Ok(())
    }
    fn serialize_u8(self, _: u8) -> Result<(), NotFinite> {
        Ok(())
    }
    fn serialize_u16(self, _: u16) -> Result<(), NotFinite> {
        Ok(())
    }
    fn serialize_u32(self, _: u32) -> Result<(), NotFinite> {
        Ok(())
    }
    fn serialize_u64(self, _: u64) -> Result<(), NotFinite> {
        Ok(())
    }
    fn serialize_u128(self, _: u128) -> Result<(), NotFinite> {
        Ok(())
    }
    fn serialize_f32(self, value: f32) -> Result<(), NotFinite> {
        float(f64::from(value))
    }
    fn serialize_f64(self, value: f64) -> Result<(), NotFinite> {
        float(value)
    }
    fn serialize_char(self, _: char) -> Result<(), NotFinite> {
        Ok(())
    }
    fn serialize_str(self, _: &str) -> Result<(), NotFinite> {
        Ok(())
    }
    fn collect_str<T: fmt::Display + ?Sized>(self, _: &T) -> Result<(), NotFinite> {
        // A string holds no float (and is not formatted for nothing).
        Ok(())
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<(), NotFinite> {
        Ok(())
    }
    fn serialize_none(self) -> Result<(), NotFinite> {
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), NotFinite> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), NotFinite> {
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), NotFinite> {
        Ok(())
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
    ) -> Result<(), NotFinite> {
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), NotFinite> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), NotFinite> {
        value
            .serialize(self)
            .map_err(|e| e.under(|| format!(".{variant}")))
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Compound, NotFinite> {
        Ok(Compound::new(None))
    }
    fn serialize_tuple(self, _: usize) -> Result<Compound, NotFinite> {
        Ok(Compound::new(None))
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Compound, NotFinite> {
        Ok(Compound::new(None))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Compound, NotFinite> {
        Ok(Compound::new(Some(variant)))
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Compound, NotFinite> {
        Ok(Compound::new(None))
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Compound, NotFinite> {
        Ok(Compound::new(None))
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Compound, NotFinite> {
        Ok(Compound::new(Some(variant)))
    }
}

impl ser::SerializeSeq for Compound {
    type Ok = ();
    type Error = NotFinite;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), NotFinite> {
        self.element(value)
    }
    fn end(self) -> Result<(), NotFinite> {
        Ok(())
    }
}

impl ser::SerializeTuple for Compound {
    type Ok = ();
    type Error = NotFinite;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), NotFinite> {
        self.element(value)
    }
    fn end(self) -> Result<(), NotFinite> {
        Ok(())
    }
}

impl ser::SerializeTupleStruct for Compound {
    type Ok = ();
    type Error = NotFinite;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), NotFinite> {
        self.element(value)
    }
    fn end(self) -> Result<(), NotFinite> {
        Ok(())
    }
}

impl ser::SerializeTupleVariant for Compound {
    type Ok = ();
    type Error = NotFinite;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), NotFinite> {
        self.element(value)
    }
    fn end(self) -> Result<(), NotFinite> {
        Ok(())
    }
}

impl ser::SerializeMap for Compound {
    type Ok = ();
    type Error = NotFinite;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), NotFinite> {
        // A float key is written as a string by serde_json (which refuses
        // a non-finite one itself): only kept, for the path.
        self.key = Some(key_segment(key));
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), NotFinite> {
        self.index += 1;
        let key = self.key.take().unwrap_or_else(|| "[?]".to_owned());
        value.serialize(Check).map_err(|e| self.found(e, || key))
    }
    fn serialize_entry<K: Serialize + ?Sized, V: Serialize + ?Sized>(
        &mut self,
        key: &K,
        value: &V,
    ) -> Result<(), NotFinite> {
        self.index += 1;
        value
            .serialize(Check)
            .map_err(|e| self.found(e, || key_segment(key)))
    }
    fn end(self) -> Result<(), NotFinite> {
        Ok(())
    }
}

impl ser::SerializeStruct for Compound {
    type Ok = ();
    type Error = NotFinite;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), NotFinite> {
        self.field(key, value)
    }
    fn end(self) -> Result<(), NotFinite> {
        Ok(())
    }
}

impl ser::SerializeStructVariant for Compound {
    type Ok = ();
    type Error = NotFinite;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), NotFinite> {
        self.field(key, value)
    }
    fn end(self) -> Result<(), NotFinite> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Serialize;

    use super::check;

    #[derive(Serialize)]
    struct Stats {
        count: u64,
        mean: f64,
        spread: Option<f32>,
        samples: Vec<f64>,
        by_name: BTreeMap<String, f64>,
        tagged: Tagged,
    }

    #[derive(Serialize)]
    enum Tagged {
        Ratio(f64),
        Pair { low: f64, high: f64 },
    }

    fn stats() -> Stats {
        Stats {
            count: 2,
            mean: 1.5,
            spread: Some(0.5),
            samples: vec![1.0, 2.0],
            by_name: BTreeMap::from([("a".to_owned(), 1.0)]),
            tagged: Tagged::Ratio(0.25),
        }
    }

    #[test]
    fn finite_values_pass_and_every_non_finite_one_is_found_by_path() {
        check(&stats()).unwrap();
        check(&serde_json::json!({"a": [1, 2.5, null]})).unwrap();
        let at = |s: Stats| check(&s).unwrap_err().to_string();
        let mut s = stats();
        s.mean = f64::NAN;
        assert!(at(s).contains("at .mean is not finite"));
        let mut s = stats();
        s.spread = Some(f32::INFINITY);
        assert!(at(s).contains("at .spread "));
        let mut s = stats();
        s.samples[1] = f64::NEG_INFINITY;
        assert!(at(s).contains("at .samples[1] "));
        let mut s = stats();
        s.by_name.insert("b".to_owned(), f64::NAN);
        assert!(at(s).contains("at .by_name.b "));
        let mut s = stats();
        s.tagged = Tagged::Pair {
            low: 0.0,
            high: f64::NAN,
        };
        assert!(at(s).contains("at .tagged.Pair.high "));
        let mut s = stats();
        s.tagged = Tagged::Ratio(f64::NAN);
        assert!(at(s).contains("at .tagged.Ratio "));
        assert!(
            check(&f64::NAN)
                .unwrap_err()
                .to_string()
                .contains("at . is not finite")
        );
        let keyed: BTreeMap<u32, f64> = BTreeMap::from([(7, f64::NAN)]);
        assert!(check(&keyed).unwrap_err().to_string().contains("at .7 "));
        let odd: BTreeMap<&str, f64> = BTreeMap::from([("a.b \"c\"", f64::NAN)]);
        assert!(
            check(&odd)
                .unwrap_err()
                .to_string()
                .contains(r#"at ["a.b \"c\""] "#)
        );
    }

    /// A flattened enum writes its variant as a key on its own, then the
    /// value: the path names the variant, as serde_json writes it.
    #[test]
    fn a_flattened_variant_is_found_under_its_own_key() {
        #[derive(Serialize)]
        struct Outer {
            a: u8,
            #[serde(flatten)]
            kind: Kind,
        }
        #[derive(Serialize)]
        enum Kind {
            Pair { high: f64 },
        }
        let outer = Outer {
            a: 1,
            kind: Kind::Pair { high: f64::NAN },
        };
        let err = check(&outer).unwrap_err().to_string();
        assert!(err.contains("at .Pair.high "), "{err}");
        let outer = Outer {
            a: 1,
            kind: Kind::Pair { high: 2.0 },
        };
        check(&outer).unwrap();
    }
}
