//! Raw libvirt calls: the only `unsafe` code in the crate.
//!
//! Small owned wrappers over `virt-sys` pointers ([`Conn`], [`Dom`]) plus the pieces the `virt`
//! crate lacks or gets wrong: job stats that tolerate a null parameter array, typed-parameter
//! conversion, the default event loop, domain-event and close callbacks, and error capture.
//!
//! Rules kept here:
//! - every pointer libvirt hands back is checked for null before use;
//! - every typed-parameter array libvirt allocates is freed with `virTypedParamsFree`;
//! - every callback body runs inside `catch_unwind` (unwinding into C is undefined behaviour);
//! - opaque callback data is owned by libvirt once registration succeeds and released by the
//!   `freecb` libvirt calls on deregistration or connection disposal; on a failed registration
//!   libvirt does not call `freecb`, so it is released here.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::{self, NonNull};
use std::sync::{Arc, OnceLock};

use virt_sys as sys;

use super::jobs::{DomainEvent, DomainId, ParamValue, Params, RawJob};

/// A libvirt error, captured from `virGetLastError` right after the failing call (the last
/// error is thread-local, so it must be read on the thread that made the call).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LvError {
    /// `virErrorNumber` (`VIR_ERR_*`), 0 when libvirt set no error.
    pub code: i32,
    /// `virErrorDomain` (`VIR_FROM_*`: which part of libvirt raised it), 0 when unknown.
    pub domain: i32,
    /// Translated text: for logs only, never to branch on (it depends on the locale).
    pub message: String,
}

impl std::fmt::Display for LvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (code {}, domain {})",
            self.message, self.code, self.domain
        )
    }
}

impl LvError {
    /// The calling thread's last libvirt error; `call` names the API for a useful message when
    /// libvirt set none.
    fn last(call: &str) -> Self {
        // SAFETY: virGetLastError takes no arguments and returns either null or a pointer to the
        // calling thread's error object, valid until the next libvirt call on this thread.
        let err = unsafe { sys::virGetLastError() };
        if err.is_null() {
            return LvError {
                code: 0,
                domain: 0,
                message: format!("{call} failed without a libvirt error"),
            };
        }
        // SAFETY: `err` is non-null and points to a valid virError (see above); we only read.
        let (code, domain, msg_ptr) = unsafe { ((*err).code, (*err).domain, (*err).message) };
        let message = if msg_ptr.is_null() {
            format!("{call} failed (libvirt error code {code})")
        } else {
            // SAFETY: `message` is a NUL-terminated string owned by the error object, which
            // stays valid while we copy it (no libvirt call in between).
            unsafe { CStr::from_ptr(msg_ptr) }
                .to_string_lossy()
                .into_owned()
        };
        LvError {
            code,
            domain,
            message,
        }
    }

    fn plain(message: impl Into<String>) -> Self {
        LvError {
            code: 0,
            domain: 0,
            message: message.into(),
        }
    }

    /// `VIR_ERR_NO_DOMAIN`: the domain is gone.
    pub fn is_no_domain(&self) -> bool {
        self.code == sys::VIR_ERR_NO_DOMAIN as i32
    }

    /// There is nothing to read with this call here: the driver does not implement it
    /// (`VIR_ERR_NO_SUPPORT`, e.g. `test:///`), or the operation does not apply to this domain
    /// now (`VIR_ERR_OPERATION_UNSUPPORTED`: QEMU's job stats of an incoming migration, "available
    /// only on the source host"). By code, never by the translated message.
    pub fn is_unsupported(&self) -> bool {
        self.code == sys::VIR_ERR_NO_SUPPORT as i32
            || self.code == sys::VIR_ERR_OPERATION_UNSUPPORTED as i32
    }

    /// The driver or daemon refuses the call (not supported, or denied to this connection).
    pub fn is_refusal(&self) -> bool {
        [
            sys::VIR_ERR_NO_SUPPORT,
            sys::VIR_ERR_OPERATION_DENIED,
            sys::VIR_ERR_ACCESS_DENIED,
        ]
        .iter()
        .any(|c| self.code == *c as i32)
    }
}

/// Global error handler: libvirt's default one prints every error to stderr. Errors are
/// returned to callers through [`LvError`] anyway, so this only logs at debug level.
unsafe extern "C" fn error_sink(_user: *mut c_void, err: sys::virErrorPtr) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        if err.is_null() {
            return;
        }
        // SAFETY: libvirt passes a valid error object for the duration of the callback.
        let (code, msg) = unsafe { ((*err).code, (*err).message) };
        let msg = if msg.is_null() {
            String::new()
        } else {
            // SAFETY: non-null NUL-terminated string owned by the error object.
            unsafe { CStr::from_ptr(msg) }
                .to_string_lossy()
                .into_owned()
        };
        tracing::debug!(code, "libvirt: {msg}");
    }));
}

/// One-time process setup, idempotent and thread-safe: `virInitialize`, the quiet error
/// handler, `virEventRegisterDefaultImpl` and a thread named `libvirt-events` looping on
/// `virEventRunDefaultImpl`. Must run before the first connection is opened (otherwise that
/// connection gets no keepalive, close callbacks or events); [`Conn::open_read_only`] calls it.
pub fn init() -> Result<(), String> {
    static INIT: OnceLock<Result<(), String>> = OnceLock::new();
    INIT.get_or_init(|| {
        // SAFETY: virInitialize has no preconditions and is internally once-guarded.
        if unsafe { sys::virInitialize() } < 0 {
            return Err(LvError::last("virInitialize").message);
        }
        // SAFETY: `error_sink` matches virErrorFunc and never unwinds; null user data is fine.
        unsafe { sys::virSetErrorFunc(ptr::null_mut(), Some(error_sink)) };
        // SAFETY: no arguments; called once (OnceLock) before any connection is opened by us.
        if unsafe { sys::virEventRegisterDefaultImpl() } < 0 {
            return Err(LvError::last("virEventRegisterDefaultImpl").message);
        }
        std::thread::Builder::new()
            .name("libvirt-events".into())
            .spawn(|| loop {
                // SAFETY: the default event implementation is registered above; running one
                // iteration from a single dedicated thread is the documented usage.
                if unsafe { sys::virEventRunDefaultImpl() } < 0 {
                    let e = LvError::last("virEventRunDefaultImpl");
                    tracing::warn!("libvirt event loop iteration failed: {e}");
                    // Avoid a hot loop if the poll keeps failing; not a synchronisation device.
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            })
            .map_err(|e| format!("cannot spawn the libvirt event thread: {e}"))?;
        Ok(())
    })
    .clone()
}

/// Copies `n` typed parameters into [`Params`]. Unknown types are skipped; string values are
/// copied lossily; a field name is read up to its NUL or the 80-byte field length.
///
/// # Safety
/// `params` must be null or point to `n` initialised `virTypedParameter`s whose `s` member
/// (for `VIR_TYPED_PARAM_STRING`) is null or a valid NUL-terminated string.
pub(crate) unsafe fn params_from_raw(params: *const sys::virTypedParameter, n: c_int) -> Params {
    let mut out = Params::new();
    let Ok(n) = usize::try_from(n) else {
        return out;
    };
    if params.is_null() || n == 0 {
        return out;
    }
    // SAFETY: the caller guarantees `n` initialised elements at a non-null `params`.
    let slice = unsafe { std::slice::from_raw_parts(params, n) };
    for p in slice {
        let field_bytes: Vec<u8> = p
            .field
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        let name = String::from_utf8_lossy(&field_bytes).into_owned();
        let ty = p.type_ as u32;
        let value = match ty {
            // SAFETY: `type_` names the union member libvirt wrote and each arm reads exactly
            // that member (plain old data); INT parameters carry `i`.
            sys::VIR_TYPED_PARAM_INT => ParamValue::Int(i64::from(unsafe { p.value.i })),
            // SAFETY: UINT parameters carry `ui`.
            sys::VIR_TYPED_PARAM_UINT => ParamValue::UInt(u64::from(unsafe { p.value.ui })),
            // SAFETY: LLONG parameters carry `l`.
            sys::VIR_TYPED_PARAM_LLONG => ParamValue::Int(unsafe { p.value.l }),
            // SAFETY: ULLONG parameters carry `ul`.
            sys::VIR_TYPED_PARAM_ULLONG => ParamValue::UInt(unsafe { p.value.ul }),
            // SAFETY: DOUBLE parameters carry `d`.
            sys::VIR_TYPED_PARAM_DOUBLE => ParamValue::Double(unsafe { p.value.d }),
            // SAFETY: BOOLEAN parameters carry `b`.
            sys::VIR_TYPED_PARAM_BOOLEAN => ParamValue::Bool(unsafe { p.value.b } != 0),
            sys::VIR_TYPED_PARAM_STRING => {
                // SAFETY: union member `s` is the active one for STRING parameters.
                let s = unsafe { p.value.s };
                if s.is_null() {
                    ParamValue::Str(String::new())
                } else {
                    // SAFETY: the caller guarantees a valid NUL-terminated string.
                    ParamValue::Str(unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned())
                }
            }
            other => {
                tracing::debug!(field = %name, r#type = other, "skipping typed parameter of unknown type");
                continue;
            }
        };
        out.insert(name, value);
    }
    out
}

/// Reads a borrowed domain's name and UUID. Returns `None` if libvirt cannot say.
///
/// # Safety
/// `dom` must be null or a valid domain pointer for the duration of the call.
unsafe fn domain_id_of(dom: sys::virDomainPtr) -> Result<DomainId, LvError> {
    if dom.is_null() {
        return Err(LvError::plain("null domain pointer"));
    }
    // SAFETY: `dom` is valid (caller); the returned name is owned by the domain object.
    let name_ptr = unsafe { sys::virDomainGetName(dom) };
    if name_ptr.is_null() {
        return Err(LvError::last("virDomainGetName"));
    }
    // SAFETY: non-null NUL-terminated string owned by `dom`, copied immediately.
    let name = unsafe { CStr::from_ptr(name_ptr) }
        .to_string_lossy()
        .into_owned();
    let mut buf = [0 as c_char; sys::VIR_UUID_STRING_BUFLEN as usize];
    // SAFETY: `buf` has VIR_UUID_STRING_BUFLEN bytes, as the API requires.
    if unsafe { sys::virDomainGetUUIDString(dom, buf.as_mut_ptr()) } < 0 {
        return Err(LvError::last("virDomainGetUUIDString"));
    }
    let bytes: Vec<u8> = buf
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    Ok(DomainId {
        name,
        uuid: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

/// An open libvirt connection (`virConnectPtr`), closed on drop.
pub struct Conn {
    ptr: NonNull<sys::virConnect>,
}

// SAFETY: libvirt connection objects are reference-counted and internally locked; libvirt
// documents that a virConnectPtr may be used from several threads at once.
unsafe impl Send for Conn {}
// SAFETY: as above: all methods take &self and libvirt serialises access internally.
unsafe impl Sync for Conn {}

/// Which domain event to subscribe to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Lifecycle,
    MigrationIteration,
    JobCompleted,
    MetadataChange,
}

/// A receiver of domain events, called on the libvirt event thread: keep it short and never
/// call back into libvirt on the same connection from it.
pub type EventHandler = Arc<dyn Fn(DomainEvent) + Send + Sync>;
/// A receiver of the connection-closed notification (`virConnectCloseReason`), same rules.
pub type CloseHandler = Box<dyn Fn(i32) + Send + Sync>;

/// Human-readable `virConnectCloseReason`.
pub fn close_reason_text(reason: i32) -> &'static str {
    match reason as u32 {
        sys::VIR_CONNECT_CLOSE_REASON_ERROR => "connection error",
        sys::VIR_CONNECT_CLOSE_REASON_EOF => "end of file from libvirtd",
        sys::VIR_CONNECT_CLOSE_REASON_KEEPALIVE => "keepalive timeout",
        sys::VIR_CONNECT_CLOSE_REASON_CLIENT => "closed by client",
        _ => "unknown close reason",
    }
}

impl Conn {
    /// `virConnectOpenReadOnly(uri)`, after [`init`].
    pub fn open_read_only(uri: &str) -> Result<Conn, LvError> {
        init().map_err(LvError::plain)?;
        let curi = CString::new(uri).map_err(|_| LvError::plain("URI contains a NUL byte"))?;
        // SAFETY: `curi` is a valid NUL-terminated string that outlives the call.
        let ptr = unsafe { sys::virConnectOpenReadOnly(curi.as_ptr()) };
        NonNull::new(ptr)
            .map(|ptr| Conn { ptr })
            .ok_or_else(|| LvError::last("virConnectOpenReadOnly"))
    }

    fn raw(&self) -> sys::virConnectPtr {
        self.ptr.as_ptr()
    }

    /// `virConnectOpen(uri)`: a read-write connection, after [`init`]. Only the forecast's
    /// opt-in dirty-rate calculations use one (`--forecast.libvirt.uri`).
    pub fn open_read_write(uri: &str) -> Result<Conn, LvError> {
        init().map_err(LvError::plain)?;
        let curi = CString::new(uri).map_err(|_| LvError::plain("URI contains a NUL byte"))?;
        // SAFETY: `curi` is a valid NUL-terminated string that outlives the call.
        let ptr = unsafe { sys::virConnectOpen(curi.as_ptr()) };
        NonNull::new(ptr)
            .map(|ptr| Conn { ptr })
            .ok_or_else(|| LvError::last("virConnectOpen"))
    }

    /// `virConnectGetAllDomainStats(DIRTYRATE | BALLOON)` of the running domains: the dirty
    /// rate libvirt measured last (whoever started the calculation) and the memory figures.
    /// Read-only; a domain that cannot name itself (it just went away) is left out.
    pub fn dirty_rate_stats(&self) -> Result<Vec<(DomainId, Params)>, LvError> {
        let mut records: *mut sys::virDomainStatsRecordPtr = ptr::null_mut();
        let stats = sys::VIR_DOMAIN_STATS_DIRTYRATE | sys::VIR_DOMAIN_STATS_BALLOON;
        // SAFETY: valid connection; `records` receives a libvirt-allocated, NULL-terminated
        // array that is freed below with virDomainStatsRecordListFree.
        let n = unsafe {
            sys::virConnectGetAllDomainStats(
                self.raw(),
                stats as c_uint,
                &mut records,
                sys::VIR_CONNECT_GET_ALL_DOMAINS_STATS_RUNNING as c_uint,
            )
        };
        if n < 0 {
            return Err(LvError::last("virConnectGetAllDomainStats"));
        }
        let mut out = Vec::with_capacity(n as usize);
        if !records.is_null() {
            for i in 0..n as usize {
                // SAFETY: libvirt returned `n` record pointers at `records`.
                let rec = unsafe { *records.add(i) };
                if rec.is_null() {
                    continue;
                }
                // SAFETY: `rec` is a valid record owned by the list until it is freed; its
                // domain is valid as long as the record, and its `nparams` parameters are
                // initialised typed parameters (strings NUL-terminated).
                let (id, params) = unsafe {
                    let r = &*rec;
                    (domain_id_of(r.dom), params_from_raw(r.params, r.nparams))
                };
                if let Ok(id) = id {
                    out.push((id, params));
                }
            }
            // SAFETY: the list came from virConnectGetAllDomainStats and is freed exactly once
            // (this also frees every record, its parameters and its domain reference).
            unsafe { sys::virDomainStatsRecordListFree(records) };
        }
        Ok(out)
    }

    /// `virConnectSetKeepAlive`. `Ok(false)` when the connection has no keepalive (local
    /// drivers such as `test:///`, or a peer that does not support it).
    pub fn set_keepalive(&self, interval_s: i32, count: u32) -> Result<bool, LvError> {
        // SAFETY: valid connection pointer; plain integer arguments.
        let rc = unsafe { sys::virConnectSetKeepAlive(self.raw(), interval_s, count as c_uint) };
        match rc {
            0 => Ok(true),
            1 => Ok(false),
            _ => {
                let e = LvError::last("virConnectSetKeepAlive");
                if e.is_refusal() {
                    Ok(false)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// `virConnectIsAlive`; an error counts as dead.
    pub fn is_alive(&self) -> bool {
        // SAFETY: valid connection pointer.
        unsafe { sys::virConnectIsAlive(self.raw()) == 1 }
    }

    /// `virConnectListAllDomains(ACTIVE)`.
    pub fn list_active_domains(&self) -> Result<Vec<Dom>, LvError> {
        let mut list: *mut sys::virDomainPtr = ptr::null_mut();
        // SAFETY: valid connection; `list` receives a libvirt-allocated array we free below.
        let n = unsafe {
            sys::virConnectListAllDomains(
                self.raw(),
                &mut list,
                sys::VIR_CONNECT_LIST_DOMAINS_ACTIVE as c_uint,
            )
        };
        if n < 0 {
            return Err(LvError::last("virConnectListAllDomains"));
        }
        let mut out = Vec::with_capacity(n as usize);
        if !list.is_null() {
            for i in 0..n as usize {
                // SAFETY: libvirt returned `n` domain pointers at `list`; each one carries a
                // reference that the `Dom` now owns (freed with virDomainFree on drop).
                let d = unsafe { *list.add(i) };
                if let Some(ptr) = NonNull::new(d) {
                    out.push(Dom { ptr });
                }
            }
            // SAFETY: the array itself was allocated by libvirt with malloc; free(3) releases it
            // (this is what virConnectListAllDomains documents: "free the array").
            unsafe { libc::free(list.cast()) };
        }
        Ok(out)
    }

    /// `virDomainLookupByUUIDString`.
    pub fn lookup_by_uuid(&self, uuid: &str) -> Result<Dom, LvError> {
        let cuuid = CString::new(uuid).map_err(|_| LvError {
            code: sys::VIR_ERR_NO_DOMAIN as i32,
            domain: 0,
            message: "UUID contains a NUL byte".into(),
        })?;
        // SAFETY: valid connection and NUL-terminated string.
        let ptr = unsafe { sys::virDomainLookupByUUIDString(self.raw(), cuuid.as_ptr()) };
        NonNull::new(ptr)
            .map(|ptr| Dom { ptr })
            .ok_or_else(|| LvError::last("virDomainLookupByUUIDString"))
    }

    /// `virConnectRegisterCloseCallback`: `handler` is called (on the event thread) with the
    /// `virConnectCloseReason` when the connection closes. One handler per connection.
    pub fn register_close_callback(&self, handler: CloseHandler) -> Result<(), LvError> {
        let opaque = Box::into_raw(Box::new(handler));
        // SAFETY: valid connection; `close_trampoline`/`free_close` match the C signatures;
        // `opaque` is a leaked Box<CloseHandler> that libvirt owns on success.
        let rc = unsafe {
            sys::virConnectRegisterCloseCallback(
                self.raw(),
                Some(close_trampoline),
                opaque.cast(),
                Some(free_close),
            )
        };
        if rc < 0 {
            let e = LvError::last("virConnectRegisterCloseCallback");
            // SAFETY: registration failed, so libvirt did not take `opaque`; reclaim it once.
            drop(unsafe { Box::from_raw(opaque) });
            return Err(e);
        }
        Ok(())
    }

    /// `virConnectUnregisterCloseCallback`; libvirt frees the handler through `free_close`.
    pub fn unregister_close_callback(&self) -> Result<(), LvError> {
        // SAFETY: valid connection; the same callback pointer as registered.
        if unsafe { sys::virConnectUnregisterCloseCallback(self.raw(), Some(close_trampoline)) } < 0
        {
            return Err(LvError::last("virConnectUnregisterCloseCallback"));
        }
        Ok(())
    }

    /// `virConnectDomainEventRegisterAny` for all domains; returns the callback id.
    pub fn register_domain_event(
        &self,
        kind: EventKind,
        handler: EventHandler,
    ) -> Result<i32, LvError> {
        let (id, cb) = generic_callback(kind);
        let cb: sys::virConnectDomainEventGenericCallback = Some(cb);
        let opaque = Box::into_raw(Box::new(handler));
        // SAFETY: valid connection; null domain = all domains; `opaque` is a leaked
        // Box<EventHandler> owned by libvirt on success and released through `free_handler`.
        let rc = unsafe {
            sys::virConnectDomainEventRegisterAny(
                self.raw(),
                ptr::null_mut(),
                id as c_int,
                cb,
                opaque.cast(),
                Some(free_handler),
            )
        };
        if rc < 0 {
            let e = LvError::last("virConnectDomainEventRegisterAny");
            // SAFETY: on failure libvirt does not call freecb (the remote driver deregisters
            // with doFreeCb = false), so the box is still ours to release, once.
            drop(unsafe { Box::from_raw(opaque) });
            return Err(e);
        }
        Ok(rc)
    }

    /// `virConnectDomainEventDeregisterAny`; libvirt frees the handler through `free_handler`.
    pub fn deregister_domain_event(&self, callback_id: i32) -> Result<(), LvError> {
        // SAFETY: valid connection; an unknown id is reported as an error, not UB.
        if unsafe { sys::virConnectDomainEventDeregisterAny(self.raw(), callback_id) } < 0 {
            return Err(LvError::last("virConnectDomainEventDeregisterAny"));
        }
        Ok(())
    }
}

type GenericCb = unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void);
type LifecycleCb =
    unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, c_int, c_int, *mut c_void) -> c_int;
type IterationCb = unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, c_int, *mut c_void);
type MetadataCb =
    unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, c_int, *const c_char, *mut c_void);
type JobCompletedCb = unsafe extern "C" fn(
    sys::virConnectPtr,
    sys::virDomainPtr,
    sys::virTypedParameterPtr,
    c_int,
    *mut c_void,
);

/// The event id and our callback cast to the generic type `virConnectDomainEventRegisterAny`
/// takes (what the `VIR_DOMAIN_EVENT_CALLBACK` macro does in C).
fn generic_callback(kind: EventKind) -> (u32, GenericCb) {
    match kind {
        EventKind::Lifecycle => (
            sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE,
            // SAFETY: a fn-pointer to fn-pointer cast of equal size; libvirt calls the pointer
            // registered for VIR_DOMAIN_EVENT_ID_LIFECYCLE with exactly LifecycleCb's arguments
            // and return type, so it is never called through the generic signature.
            unsafe { std::mem::transmute::<LifecycleCb, GenericCb>(lifecycle_cb) },
        ),
        EventKind::MigrationIteration => (
            sys::VIR_DOMAIN_EVENT_ID_MIGRATION_ITERATION,
            // SAFETY: as above, for the MIGRATION_ITERATION signature.
            unsafe { std::mem::transmute::<IterationCb, GenericCb>(iteration_cb) },
        ),
        EventKind::JobCompleted => (
            sys::VIR_DOMAIN_EVENT_ID_JOB_COMPLETED,
            // SAFETY: as above, for the JOB_COMPLETED signature.
            unsafe { std::mem::transmute::<JobCompletedCb, GenericCb>(job_completed_cb) },
        ),
        EventKind::MetadataChange => (
            sys::VIR_DOMAIN_EVENT_ID_METADATA_CHANGE,
            // SAFETY: as above, for the METADATA_CHANGE signature.
            unsafe { std::mem::transmute::<MetadataCb, GenericCb>(metadata_cb) },
        ),
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // SAFETY: we own one reference to the connection and never use it after this.
        unsafe { sys::virConnectClose(self.raw()) };
    }
}

unsafe extern "C" fn close_trampoline(
    _conn: sys::virConnectPtr,
    reason: c_int,
    opaque: *mut c_void,
) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        if opaque.is_null() {
            return;
        }
        // SAFETY: `opaque` is the Box<CloseHandler> registered with this callback; libvirt
        // keeps it alive until it calls `free_close`.
        let handler = unsafe { &*(opaque as *const CloseHandler) };
        handler(reason);
    }));
}

unsafe extern "C" fn free_close(opaque: *mut c_void) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        if !opaque.is_null() {
            // SAFETY: libvirt calls the free callback exactly once for the opaque pointer we
            // leaked from a Box<CloseHandler> in `register_close_callback`.
            drop(unsafe { Box::from_raw(opaque as *mut CloseHandler) });
        }
    }));
}

unsafe extern "C" fn free_handler(opaque: *mut c_void) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        if !opaque.is_null() {
            // SAFETY: libvirt calls the free callback exactly once for the opaque pointer we
            // leaked from a Box<EventHandler> in `register_domain_event`.
            drop(unsafe { Box::from_raw(opaque as *mut EventHandler) });
        }
    }));
}

/// Shared body of the event callbacks: resolve the domain, build the event, hand it over.
///
/// # Safety
/// `dom` must be null or valid for the call; `opaque` must be null or the Box<EventHandler>
/// registered with the callback.
unsafe fn dispatch(
    dom: sys::virDomainPtr,
    opaque: *mut c_void,
    build: impl FnOnce(DomainId) -> DomainEvent,
) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        if opaque.is_null() {
            return;
        }
        // SAFETY: see the function's contract.
        let handler = unsafe { &*(opaque as *const EventHandler) };
        // SAFETY: libvirt passes a domain valid for the duration of the callback.
        match unsafe { domain_id_of(dom) } {
            Ok(id) => handler(build(id)),
            Err(e) => tracing::debug!("dropping a domain event: cannot identify its domain: {e}"),
        }
    }));
}

unsafe extern "C" fn lifecycle_cb(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    event: c_int,
    detail: c_int,
    opaque: *mut c_void,
) -> c_int {
    // SAFETY: arguments come straight from libvirt for this registration.
    unsafe {
        dispatch(dom, opaque, |domain| DomainEvent::Lifecycle {
            domain,
            event,
            detail,
        })
    };
    0
}

unsafe extern "C" fn iteration_cb(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    iteration: c_int,
    opaque: *mut c_void,
) {
    // SAFETY: arguments come straight from libvirt for this registration.
    unsafe {
        dispatch(dom, opaque, |domain| DomainEvent::Iteration {
            domain,
            iteration: i64::from(iteration),
        })
    };
}

unsafe extern "C" fn job_completed_cb(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    params: sys::virTypedParameterPtr,
    nparams: c_int,
    opaque: *mut c_void,
) {
    // SAFETY: libvirt owns `params` (nparams entries) for the duration of the callback and
    // frees them itself afterwards; we only copy.
    let params = unsafe { params_from_raw(params, nparams) };
    // SAFETY: arguments come straight from libvirt for this registration.
    unsafe {
        dispatch(dom, opaque, |domain| DomainEvent::JobCompleted {
            domain,
            params,
        })
    };
}

unsafe extern "C" fn metadata_cb(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    _kind: c_int,
    nsuri: *const c_char,
    opaque: *mut c_void,
) {
    // SAFETY: libvirt passes a NUL-terminated namespace URI (or null) valid for the callback.
    let uri = (!nsuri.is_null()).then(|| {
        unsafe { CStr::from_ptr(nsuri) }
            .to_string_lossy()
            .into_owned()
    });
    // SAFETY: arguments come straight from libvirt for this registration.
    unsafe {
        dispatch(dom, opaque, |domain| DomainEvent::MetadataChange {
            domain,
            uri,
        })
    };
}

/// A domain reference (`virDomainPtr`), freed on drop.
pub struct Dom {
    ptr: NonNull<sys::virDomain>,
}

// SAFETY: domain objects are reference-counted and thread-safe like connections.
unsafe impl Send for Dom {}
// SAFETY: as above; all methods take &self.
unsafe impl Sync for Dom {}

impl Drop for Dom {
    fn drop(&mut self) {
        // SAFETY: we own one reference and never use the pointer after this.
        unsafe { sys::virDomainFree(self.ptr.as_ptr()) };
    }
}

impl Dom {
    /// Name and UUID string.
    pub fn id(&self) -> Result<DomainId, LvError> {
        // SAFETY: `self.ptr` is a valid domain we hold a reference to.
        unsafe { domain_id_of(self.ptr.as_ptr()) }
    }

    /// `virDomainGetJobStats`. With `completed`, uses `COMPLETED | KEEP_COMPLETED` so the
    /// completed statistics stay available to other readers. A job of type NONE comes back
    /// with empty params (libvirt gives a null array then).
    pub fn job_stats(&self, completed: bool) -> Result<RawJob, LvError> {
        let flags = if completed {
            sys::VIR_DOMAIN_JOB_STATS_COMPLETED | sys::VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED
        } else {
            0
        };
        let mut job_type: c_int = 0;
        let mut params: sys::virTypedParameterPtr = ptr::null_mut();
        let mut n: c_int = 0;
        // SAFETY: valid domain; the out-pointers point to locals; libvirt allocates `params`.
        let rc = unsafe {
            sys::virDomainGetJobStats(
                self.ptr.as_ptr(),
                &mut job_type,
                &mut params,
                &mut n,
                flags as c_uint,
            )
        };
        if rc < 0 {
            return Err(LvError::last("virDomainGetJobStats"));
        }
        // SAFETY: on success libvirt returned `n` initialised parameters at `params` (or null).
        let converted = unsafe { params_from_raw(params, n) };
        if !params.is_null() {
            // SAFETY: the array came from libvirt; free it and its strings exactly once.
            unsafe { sys::virTypedParamsFree(params, n) };
        }
        Ok(RawJob {
            job_type,
            params: converted,
        })
    }

    /// `virDomainGetMetadata` of the element in namespace `uri`; `None` when there is none.
    pub fn metadata_element(&self, uri: &str) -> Result<Option<String>, LvError> {
        let curi = CString::new(uri).map_err(|_| LvError {
            code: sys::VIR_ERR_INVALID_ARG as i32,
            domain: 0,
            message: "namespace URI contains a NUL byte".into(),
        })?;
        // SAFETY: valid domain and NUL-terminated URI; flags 0 = the current (live) definition.
        let xml = unsafe {
            sys::virDomainGetMetadata(
                self.ptr.as_ptr(),
                sys::VIR_DOMAIN_METADATA_ELEMENT as c_int,
                curi.as_ptr(),
                0,
            )
        };
        if xml.is_null() {
            let e = LvError::last("virDomainGetMetadata");
            return if e.code == sys::VIR_ERR_NO_DOMAIN_METADATA as i32 {
                Ok(None)
            } else {
                Err(e)
            };
        }
        // SAFETY: libvirt returned a malloc'ed NUL-terminated string that we now own.
        let text = unsafe { CStr::from_ptr(xml) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: freed exactly once, with free(3) as libvirt documents.
        unsafe { libc::free(xml.cast()) };
        Ok(Some(text))
    }

    /// `virDomainStartDirtyRateCalc` in page-sampling mode over `seconds` (needs a read-write
    /// connection): QEMU hashes a sample of pages at the start and the end, the guest runs on.
    pub fn start_dirty_rate_calc(&self, seconds: i32) -> Result<(), LvError> {
        // SAFETY: valid domain; plain integer arguments.
        let rc = unsafe {
            sys::virDomainStartDirtyRateCalc(
                self.ptr.as_ptr(),
                seconds as c_int,
                sys::VIR_DOMAIN_DIRTYRATE_MODE_PAGE_SAMPLING as c_uint,
            )
        };
        if rc < 0 {
            return Err(LvError::last("virDomainStartDirtyRateCalc"));
        }
        Ok(())
    }

    /// `virDomainMigrateGetMaxSpeed` in MiB/s: the pre-copy cap, or with `postcopy` the
    /// post-copy one (`VIR_DOMAIN_MIGRATE_MAX_SPEED_POSTCOPY`). libvirt 9.0 refuses it on a
    /// read-only connection ("read only access prevents virDomainMigrateGetMaxSpeed").
    pub fn migrate_max_speed_mibs(&self, postcopy: bool) -> Result<u64, LvError> {
        let flags = if postcopy {
            sys::VIR_DOMAIN_MIGRATE_MAX_SPEED_POSTCOPY as c_uint
        } else {
            0
        };
        let mut v: std::os::raw::c_ulong = 0;
        // SAFETY: valid domain; `v` is a local out-parameter of the type libvirt writes.
        if unsafe { sys::virDomainMigrateGetMaxSpeed(self.ptr.as_ptr(), &mut v, flags) } < 0 {
            return Err(LvError::last("virDomainMigrateGetMaxSpeed"));
        }
        // `unsigned long` is 32 bits on some targets; the same type as u64 on this one.
        #[allow(clippy::useless_conversion)]
        let mibs = u64::from(v);
        Ok(mibs)
    }

    /// `virDomainMigrateGetMaxDowntime` in milliseconds.
    pub fn max_downtime_ms(&self) -> Result<u64, LvError> {
        let mut v: std::os::raw::c_ulonglong = 0;
        // SAFETY: valid domain; `v` is a local out-parameter.
        if unsafe { sys::virDomainMigrateGetMaxDowntime(self.ptr.as_ptr(), &mut v, 0) } < 0 {
            return Err(LvError::last("virDomainMigrateGetMaxDowntime"));
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(name: &str, ty: u32, value: sys::_virTypedParameterValue) -> sys::virTypedParameter {
        let mut field = [0 as c_char; sys::VIR_TYPED_PARAM_FIELD_LENGTH as usize];
        for (d, s) in field.iter_mut().zip(name.bytes()) {
            *d = s as c_char;
        }
        sys::virTypedParameter {
            field,
            type_: ty as c_int,
            value,
        }
    }

    /// The destination's "no live stats here" answer is recognised by libvirt's error code, not
    /// its English text, which a translated libvirt (LANG=fr_FR) does not send.
    #[test]
    fn job_stats_refusals_are_told_by_code_not_by_text() {
        let incoming = LvError {
            code: sys::VIR_ERR_OPERATION_UNSUPPORTED as i32,
            domain: sys::VIR_FROM_QEMU as i32,
            message: "Opération non supportée : les statistiques de migration ne sont disponibles que sur l'hôte source".into(),
        };
        assert!(incoming.is_unsupported());
        let test_driver = LvError {
            code: sys::VIR_ERR_NO_SUPPORT as i32,
            domain: sys::VIR_FROM_TEST as i32,
            message: String::new(),
        };
        assert!(test_driver.is_unsupported());
        let other = LvError {
            code: sys::VIR_ERR_INTERNAL_ERROR as i32,
            domain: sys::VIR_FROM_QEMU as i32,
            message: "migration statistics are available only on the source host".into(),
        };
        assert!(!other.is_unsupported(), "a real failure, whatever it says");
    }

    #[test]
    fn converts_every_typed_parameter_type() {
        let s = CString::new("migration failed: boom").expect("no NUL");
        let params = [
            param(
                "auto_converge_throttle",
                sys::VIR_TYPED_PARAM_INT,
                sys::_virTypedParameterValue { i: -7 },
            ),
            param(
                "u",
                sys::VIR_TYPED_PARAM_UINT,
                sys::_virTypedParameterValue { ui: u32::MAX },
            ),
            param(
                "l",
                sys::VIR_TYPED_PARAM_LLONG,
                sys::_virTypedParameterValue { l: i64::MIN },
            ),
            param(
                "data_total",
                sys::VIR_TYPED_PARAM_ULLONG,
                sys::_virTypedParameterValue { ul: u64::MAX },
            ),
            param(
                "d",
                sys::VIR_TYPED_PARAM_DOUBLE,
                sys::_virTypedParameterValue { d: 1.5 },
            ),
            param(
                "success",
                sys::VIR_TYPED_PARAM_BOOLEAN,
                sys::_virTypedParameterValue { b: 1 },
            ),
            param(
                "nope",
                sys::VIR_TYPED_PARAM_BOOLEAN,
                sys::_virTypedParameterValue { b: 0 },
            ),
            param(
                "errmsg",
                sys::VIR_TYPED_PARAM_STRING,
                sys::_virTypedParameterValue {
                    s: s.as_ptr() as *mut c_char,
                },
            ),
            param(
                "nullstr",
                sys::VIR_TYPED_PARAM_STRING,
                sys::_virTypedParameterValue { s: ptr::null_mut() },
            ),
            param("weird", 99, sys::_virTypedParameterValue { ul: 1 }),
        ];
        // SAFETY: a local array of initialised parameters; the one string outlives the call.
        let got = unsafe { params_from_raw(params.as_ptr(), params.len() as c_int) };
        let mut want = Params::new();
        want.insert("auto_converge_throttle".into(), ParamValue::Int(-7));
        want.insert("u".into(), ParamValue::UInt(u64::from(u32::MAX)));
        want.insert("l".into(), ParamValue::Int(i64::MIN));
        want.insert("data_total".into(), ParamValue::UInt(u64::MAX));
        want.insert("d".into(), ParamValue::Double(1.5));
        want.insert("success".into(), ParamValue::Bool(true));
        want.insert("nope".into(), ParamValue::Bool(false));
        want.insert(
            "errmsg".into(),
            ParamValue::Str("migration failed: boom".into()),
        );
        want.insert("nullstr".into(), ParamValue::Str(String::new()));
        assert_eq!(got, want);
    }

    #[test]
    fn field_name_without_nul_is_bounded() {
        let mut p = param(
            "x",
            sys::VIR_TYPED_PARAM_ULLONG,
            sys::_virTypedParameterValue { ul: 3 },
        );
        p.field = [b'a' as c_char; sys::VIR_TYPED_PARAM_FIELD_LENGTH as usize];
        // SAFETY: one initialised local parameter.
        let got = unsafe { params_from_raw(&p, 1) };
        let (k, v) = got.into_iter().next().expect("one param");
        assert_eq!(k.len(), sys::VIR_TYPED_PARAM_FIELD_LENGTH as usize);
        assert_eq!(v, ParamValue::UInt(3));
    }

    #[test]
    fn null_or_empty_or_negative_count_is_empty() {
        // SAFETY: null pointer / zero or negative counts are part of the contract.
        unsafe {
            assert!(params_from_raw(ptr::null(), 5).is_empty());
            let p = param(
                "x",
                sys::VIR_TYPED_PARAM_INT,
                sys::_virTypedParameterValue { i: 1 },
            );
            assert!(params_from_raw(&p, 0).is_empty());
            assert!(params_from_raw(&p, -1).is_empty());
        }
    }

    #[test]
    fn close_reasons_have_text() {
        assert_eq!(close_reason_text(1), "end of file from libvirtd");
        assert_eq!(close_reason_text(2), "keepalive timeout");
        assert_eq!(close_reason_text(42), "unknown close reason");
    }
}
