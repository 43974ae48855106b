//! User types served by a manager: `#[multiproc::managed] impl T { ... }`.

use std::any::type_name;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::objects::{Ctx, Object, lock};
use super::proxy::ProxyType;
use super::wire::{Fault, args};

/// A type whose methods a manager serves; implemented by
/// [`#[multiproc::managed]`](crate::managed) on an `impl` block, which also generates the
/// proxy type (`Counter` → `CounterProxy`) with one method per method of the block.
///
/// The server holds the value; each call locks it, so its methods run one at a time (calls
/// on other objects go on meanwhile). A panicking method comes back as
/// [`ManagerError::Panicked`](crate::ManagerError::Panicked) and the object stays usable.
pub trait Managed: Serialize + DeserializeOwned + Send + 'static {
    /// The generated proxy type.
    type Proxy: ProxyType;

    /// Runs `method` with encoded arguments; generated.
    #[doc(hidden)]
    fn __dispatch(&mut self, method: &str, args: &[u8]) -> Result<Vec<u8>, __Fault>;
}

/// Opaque error of generated dispatch code.
#[doc(hidden)]
#[derive(Debug)]
pub struct __Fault(pub(crate) Fault);

impl std::fmt::Display for __Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// Decodes the arguments of a generated dispatch arm.
#[doc(hidden)]
pub fn __args<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, __Fault> {
    args(bytes).map_err(__Fault)
}

/// Encodes a generated dispatch arm's result.
#[doc(hidden)]
pub fn __ret<T: Serialize>(value: &T) -> Result<Vec<u8>, __Fault> {
    super::wire::ret(value).map_err(__Fault)
}

/// The error of a dispatch for a method name the type does not have.
#[doc(hidden)]
pub fn __unknown<T>(method: &str) -> __Fault {
    __Fault(Fault::UnknownMethod {
        kind: kind_of::<T>(),
        method: method.to_string(),
    })
}

/// The kind under which user type `T` is served.
#[doc(hidden)]
pub fn kind_of<T>() -> String {
    format!("user:{}", type_name::<T>())
}

/// A registered user type: its kind and how to build it from encoded state.
#[doc(hidden)]
#[derive(Debug)]
pub struct ManagedEntry {
    /// The kind (`user:` and the type's path).
    pub kind: fn() -> String,
    /// Builds the served object from the encoded value.
    pub create: fn(&[u8]) -> Result<__Served, __Fault>,
}

/// Every `#[multiproc::managed]` type of the binary.
#[doc(hidden)]
#[linkme::distributed_slice]
pub static MANAGED_TYPES: [ManagedEntry];

/// A served object (opaque to user code).
#[doc(hidden)]
pub struct __Served(pub(crate) Box<dyn Object>);

impl std::fmt::Debug for __Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.kind())
    }
}

/// The served form of a user value.
struct UserObject<T> {
    kind: String,
    value: Mutex<T>,
}

/// Builds the served object of `T` from its encoded value; the generated registration
/// calls it.
#[doc(hidden)]
pub fn __create<T: Managed>(init: &[u8]) -> Result<__Served, __Fault> {
    let value: T = __args(init)?;
    Ok(__Served(Box::new(UserObject {
        kind: kind_of::<T>(),
        value: Mutex::new(value),
    })))
}

impl<T: Managed> Object for UserObject<T> {
    fn kind(&self) -> &str {
        &self.kind
    }

    fn call(&self, _: &Ctx<'_>, method: &str, args: &[u8]) -> Result<Vec<u8>, Fault> {
        let mut value = lock(&self.value);
        match catch_unwind(AssertUnwindSafe(|| value.__dispatch(method, args))) {
            Ok(r) => r.map_err(|f| f.0),
            Err(payload) => Err(Fault::Panicked(crate::process::panic_message(&*payload))),
        }
    }
}

/// Creates a registered user object of `kind`; `None` when the binary has no such type.
pub(crate) fn create_user(kind: &str, init: &[u8]) -> Option<Result<Box<dyn Object>, Fault>> {
    let entry = MANAGED_TYPES.iter().find(|e| (e.kind)() == kind)?;
    Some((entry.create)(init).map(|o| o.0).map_err(|f| f.0))
}
