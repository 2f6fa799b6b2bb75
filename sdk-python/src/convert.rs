//! Python values to canonical CBOR values and back (the table in `sdk-python/README.md`).
//!
//! | Python                         | CBOR                                             |
//! |--------------------------------|--------------------------------------------------|
//! | `None`                         | null                                             |
//! | `bool`                         | true / false                                     |
//! | `int`                          | integer; beyond -2^64..2^64-1 a bignum (tag 2/3) |
//! | `float`                        | float (shortest exact width)                     |
//! | `str`                          | text                                             |
//! | `bytes`, `bytearray`, `memoryview` | byte string (read back as `bytes`)           |
//! | `list`, `tuple`                | array (read back as `list`)                      |
//! | `dict`                         | map (keys converted by this table)               |
//! | timezone-aware `datetime`      | tag 1 (epoch seconds, integer or float)          |
//! | `uuid.UUID`                    | tag 37 around 16 bytes                           |
//! | `entidb.Tag(n, v)`             | tag n around v                                   |
//! | `entidb.Undefined`, `entidb.Simple(n)` | undefined, simple value n                |
//!
//! Anything else (a naive `datetime`, a `set`, an object) raises `TypeError` naming the path
//! inside the document (`$.tags[2]`). Reading: map keys that are arrays become tuples (a dict
//! key must be hashable), and a map used as a map key (valid CBOR that another client may
//! write) raises `TypeError` naming where it is; tag 1 becomes an aware `datetime` in UTC.

use entidb::EntityId;
use entidb::cbor::{Int, Simple, Value};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{
    PyBool, PyByteArray, PyBytes, PyDict, PyFloat, PyInt, PyList, PyMemoryView, PyString, PyTuple,
};

/// Deepest nesting converted (the engine's own limit is higher; Python recursion is not).
const MAX_DEPTH: usize = 200;

static DATETIME: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static TIMEZONE_UTC: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static UUID: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static TYPES: PyOnceLock<(Py<PyAny>, Py<PyAny>, Py<PyAny>)> = PyOnceLock::new();

fn datetime_type(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    Ok(DATETIME
        .get_or_try_init(py, || -> PyResult<_> {
            Ok(py.import("datetime")?.getattr("datetime")?.unbind())
        })?
        .bind(py))
}

fn utc(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    Ok(TIMEZONE_UTC
        .get_or_try_init(py, || -> PyResult<_> {
            Ok(py
                .import("datetime")?
                .getattr("timezone")?
                .getattr("utc")?
                .unbind())
        })?
        .bind(py))
}

fn uuid_type(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    Ok(UUID
        .get_or_try_init(py, || -> PyResult<_> {
            Ok(py.import("uuid")?.getattr("UUID")?.unbind())
        })?
        .bind(py))
}

/// `entidb._types.Tag`, `Simple` and the `Undefined` singleton (plain Python classes).
fn cbor_types(
    py: Python<'_>,
) -> PyResult<(&Bound<'_, PyAny>, &Bound<'_, PyAny>, &Bound<'_, PyAny>)> {
    let t = TYPES.get_or_try_init(py, || -> PyResult<_> {
        let m = py.import("entidb._types")?;
        Ok((
            m.getattr("Tag")?.unbind(),
            m.getattr("Simple")?.unbind(),
            m.getattr("Undefined")?.unbind(),
        ))
    })?;
    Ok((t.0.bind(py), t.1.bind(py), t.2.bind(py)))
}

/// Where in a document a value sits, for error messages: `$.a.b[3]`.
#[derive(Debug, Clone)]
enum Step {
    Key(String),
    Index(usize),
}

fn render_path(path: &[Step]) -> String {
    let mut s = String::from("$");
    for p in path {
        match p {
            Step::Key(k) => {
                s.push('.');
                s.push_str(k);
            }
            Step::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

fn type_error(obj: &Bound<'_, PyAny>, path: &[Step], why: &str) -> PyErr {
    let ty = obj
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".to_owned());
    PyTypeError::new_err(format!(
        "cannot store a value of type {ty} at {}: {why}",
        render_path(path)
    ))
}

/// Convert a Python value to a CBOR value.
pub fn to_value(obj: &Bound<'_, PyAny>) -> PyResult<Value> {
    let mut path = Vec::new();
    to_value_at(obj, &mut path)
}

fn int_value(obj: &Bound<'_, PyAny>) -> PyResult<Value> {
    if let Ok(v) = obj.extract::<i64>() {
        return Ok(Value::from(v));
    }
    let big: i128 = match obj.extract::<i128>() {
        Ok(v) => v,
        Err(_) => return bignum(obj),
    };
    match Int::try_from(big) {
        Ok(i) => Ok(Value::Int(i)),
        Err(_) => bignum(obj),
    }
}

/// An integer outside the CBOR range as a bignum: tag 2 (n) or 3 (-1 - n) around its
/// big-endian magnitude.
fn bignum(obj: &Bound<'_, PyAny>) -> PyResult<Value> {
    let py = obj.py();
    let zero = 0i64.into_pyobject(py)?;
    let negative = obj.lt(&zero)?;
    let magnitude = if negative {
        obj.neg()?.sub(1)?
    } else {
        obj.clone()
    };
    let nbits: usize = magnitude.call_method0("bit_length")?.extract()?;
    let nbytes = nbits.div_ceil(8).max(1);
    let bytes: Vec<u8> = magnitude
        .call_method1("to_bytes", (nbytes, "big"))?
        .extract()?;
    Ok(Value::Tag(
        if negative { 3 } else { 2 },
        Box::new(Value::Bytes(bytes)),
    ))
}

fn to_value_at(obj: &Bound<'_, PyAny>, path: &mut Vec<Step>) -> PyResult<Value> {
    if path.len() > MAX_DEPTH {
        return Err(type_error(obj, path, "nested too deeply"));
    }
    let py = obj.py();
    if obj.is_none() {
        return Ok(Value::Null);
    }
    if let Ok(b) = obj.cast::<PyBool>() {
        return Ok(Value::Bool(b.is_true()));
    }
    if obj.is_instance_of::<PyInt>() {
        return int_value(obj);
    }
    if let Ok(f) = obj.cast::<PyFloat>() {
        return Ok(Value::Float(f.value()));
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(Value::Text(s.to_cow()?.into_owned()));
    }
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(Value::Bytes(b.as_bytes().to_vec()));
    }
    if obj.is_instance_of::<PyByteArray>() || obj.is_instance_of::<PyMemoryView>() {
        let b: Vec<u8> = py
            .import("builtins")?
            .getattr("bytes")?
            .call1((obj,))?
            .extract()?;
        return Ok(Value::Bytes(b));
    }
    if let Ok(d) = obj.cast::<PyDict>() {
        let mut entries = Vec::with_capacity(d.len());
        // Over a copy of the dict: converting a key or value runs Python code (a UUID's
        // `bytes`, a `tzinfo`), which may let another thread change the dict, and PyO3's
        // dict iterator panics when the size changes under it.
        for (k, v) in d.copy()?.iter() {
            let label = match k.cast::<PyString>() {
                Ok(s) => s.to_cow()?.into_owned(),
                Err(_) => k.repr()?.to_cow()?.into_owned(),
            };
            path.push(Step::Key(label));
            let key = to_value_at(&k, path)?;
            let value = to_value_at(&v, path)?;
            path.pop();
            entries.push((key, value));
        }
        return Ok(Value::Map(entries));
    }
    if obj.is_instance_of::<PyList>() || obj.is_instance_of::<PyTuple>() {
        let mut items = Vec::new();
        for (i, item) in obj.try_iter()?.enumerate() {
            path.push(Step::Index(i));
            items.push(to_value_at(&item?, path)?);
            path.pop();
        }
        return Ok(Value::Array(items));
    }
    if obj.is_instance(datetime_type(py)?)? {
        if obj.getattr("tzinfo")?.is_none() {
            return Err(type_error(
                obj,
                path,
                "a naive datetime has no defined instant; give it a timezone",
            ));
        }
        let ts: f64 = obj.call_method0("timestamp")?.extract()?;
        let micro: u32 = obj.getattr("microsecond")?.extract()?;
        let v = if micro == 0 && ts.fract() == 0.0 && ts.abs() < 9.0e15 {
            Value::from(ts as i64)
        } else {
            Value::Float(ts)
        };
        return Ok(Value::Tag(1, Box::new(v)));
    }
    if obj.is_instance(uuid_type(py)?)? {
        let b: Vec<u8> = obj.getattr("bytes")?.extract()?;
        return Ok(Value::Tag(37, Box::new(Value::Bytes(b))));
    }
    let (tag, simple, undefined) = cbor_types(py)?;
    if obj.is(undefined) {
        return Ok(Value::Undefined);
    }
    if obj.is_instance(tag)? {
        let n: u64 = obj.getattr("tag")?.extract()?;
        path.push(Step::Key(format!("<tag {n}>")));
        let inner = to_value_at(&obj.getattr("value")?, path)?;
        path.pop();
        return Ok(Value::Tag(n, Box::new(inner)));
    }
    if obj.is_instance(simple)? {
        let n: u8 = obj.getattr("value")?.extract()?;
        return match Simple::new(n) {
            Some(s) => Ok(Value::Simple(s)),
            None => Err(type_error(obj, path, "simple values 20-31 are reserved")),
        };
    }
    Err(type_error(
        obj,
        path,
        "no CBOR mapping (see the type table in the docs)",
    ))
}

/// Convert a CBOR value to a Python value.
pub fn to_py<'py>(py: Python<'py>, v: &Value) -> PyResult<Bound<'py, PyAny>> {
    let mut path = Vec::new();
    to_py_at(py, v, false, &mut path)
}

/// `as_key`: the value is (inside) a map key, so it must be hashable: arrays become tuples,
/// and a map (which has no hashable Python form) is a `TypeError` naming where it is.
fn to_py_at<'py>(
    py: Python<'py>,
    v: &Value,
    as_key: bool,
    path: &mut Vec<Step>,
) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Int(i) => i.as_i128().into_pyobject(py)?.into_any(),
        Value::Float(f) => PyFloat::new(py, *f).into_any(),
        Value::Text(s) => PyString::new(py, s).into_any(),
        Value::Bytes(b) => PyBytes::new(py, b).into_any(),
        Value::Array(items) => {
            let mut list: Vec<Bound<'py, PyAny>> = Vec::with_capacity(items.len());
            for (i, x) in items.iter().enumerate() {
                path.push(Step::Index(i));
                list.push(to_py_at(py, x, as_key, path)?);
                path.pop();
            }
            if as_key {
                PyTuple::new(py, list)?.into_any()
            } else {
                PyList::new(py, list)?.into_any()
            }
        }
        Value::Map(_) if as_key => {
            return Err(PyTypeError::new_err(format!(
                "cannot read the map used as a map key at {}: a Python dict key must be \
                 hashable, and a map has no hashable form",
                render_path(path)
            )));
        }
        Value::Map(entries) => {
            let d = PyDict::new(py);
            for (k, x) in entries {
                path.push(Step::Key(match k {
                    Value::Text(t) => t.clone(),
                    other => format!("{other:?}"),
                }));
                let key = to_py_at(py, k, true, path)?;
                d.set_item(key, to_py_at(py, x, false, path)?)?;
                path.pop();
            }
            d.into_any()
        }
        Value::Tag(1, inner) => {
            let secs = match &**inner {
                Value::Int(i) => i.as_i128() as f64,
                Value::Float(f) => *f,
                _ => return tag_object(py, 1, inner, as_key, path),
            };
            // A stamp Python's datetime cannot hold (past year 9999, NaN: another client's,
            // or `datetime.max` rounded up on the way in) reads as the tag it is instead of
            // failing every read of the document.
            match datetime_type(py)?.call_method1("fromtimestamp", (secs, utc(py)?)) {
                Ok(dt) => dt,
                Err(_) => return tag_object(py, 1, inner, as_key, path),
            }
        }
        Value::Tag(37, inner) if matches!(&**inner, Value::Bytes(b) if b.len() == 16) => {
            let Value::Bytes(b) = &**inner else {
                return tag_object(py, 37, inner, as_key, path);
            };
            let kwargs = PyDict::new(py);
            kwargs.set_item("bytes", PyBytes::new(py, b))?;
            uuid_type(py)?.call((), Some(&kwargs))?
        }
        Value::Tag(t @ (2 | 3), inner) if matches!(&**inner, Value::Bytes(_)) => {
            let Value::Bytes(b) = &**inner else {
                return tag_object(py, *t, inner, as_key, path);
            };
            let int = py.import("builtins")?.getattr("int")?;
            let n = int.call_method1("from_bytes", (PyBytes::new(py, b), "big"))?;
            if *t == 3 { n.neg()?.sub(1)? } else { n }
        }
        Value::Tag(t, inner) => return tag_object(py, *t, inner, as_key, path),
        Value::Undefined => cbor_types(py)?.2.clone(),
        Value::Simple(s) => cbor_types(py)?.1.call1((s.value(),))?,
    })
}

fn tag_object<'py>(
    py: Python<'py>,
    tag: u64,
    inner: &Value,
    as_key: bool,
    path: &mut Vec<Step>,
) -> PyResult<Bound<'py, PyAny>> {
    cbor_types(py)?
        .0
        .call1((tag, to_py_at(py, inner, as_key, path)?))
}

/// A decoded document on its way to Python (converted when the awaitable resolves, with the
/// GIL held).
#[derive(Debug)]
pub struct PyValue(pub Value);

impl<'py> IntoPyObject<'py> for PyValue {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;
    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_py(py, &self.0)
    }
}

/// An entity id from a `uuid.UUID`, its text form, or 16 bytes.
pub fn to_id(obj: &Bound<'_, PyAny>) -> PyResult<EntityId> {
    let py = obj.py();
    if obj.is_instance(uuid_type(py)?)? {
        let b: Vec<u8> = obj.getattr("bytes")?.extract()?;
        return EntityId::from_slice(&b).ok_or_else(|| PyValueError::new_err("bad UUID"));
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return s
            .to_cow()?
            .parse()
            .map_err(|e| PyValueError::new_err(format!("invalid entity id {s}: {e}")));
    }
    if let Ok(b) = obj.cast::<PyBytes>() {
        return EntityId::from_slice(b.as_bytes())
            .ok_or_else(|| PyValueError::new_err("an entity id is 16 bytes"));
    }
    Err(PyTypeError::new_err(
        "an entity id is a uuid.UUID, its string form, or 16 bytes",
    ))
}

/// An entity id as a `uuid.UUID`.
#[derive(Debug, Clone, Copy)]
pub struct PyId(pub EntityId);

impl<'py> IntoPyObject<'py> for PyId {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;
    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let kwargs = PyDict::new(py);
        kwargs.set_item("bytes", PyBytes::new(py, self.0.as_bytes()))?;
        uuid_type(py)?.call((), Some(&kwargs))
    }
}
