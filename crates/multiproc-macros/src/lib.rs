//! Attribute macros of `multiproc`; use them through the `multiproc` crate:
//! `#[multiproc::func]`, `#[multiproc::main]`, `#[multiproc::test]`, `#[multiproc::managed]`.

#![cfg_attr(docsrs, feature(doc_cfg))]

use proc_macro::TokenStream;
use quote::{format_ident, quote};
use syn::{FnArg, ImplItem, ItemFn, ItemImpl, ReturnType, Type, parse_macro_input};

/// Registers a function so that a child process can run it: `f.spawn(args)` or
/// `Process::builder().start(&f, args)`.
///
/// The function stays an ordinary function. Its arguments and result must be
/// `Serialize + DeserializeOwned`, taken by value (`String`, not `&str`: the argument is
/// decoded into an owned value in the child); it may not be generic, `async` or a method.
/// Callers may still pass borrowed items to a pool (`pool.map(&f, &names)`).
///
/// One argument is passed as itself, several as a tuple, none as `()`:
///
/// ```
/// use multiproc::{Func, Pool, Process};
///
/// #[multiproc::func]
/// fn greet(name: String, times: usize) -> String {
///     format!("hello {name}! ").repeat(times)
/// }
///
/// #[multiproc::func]
/// fn pid() -> u32 {
///     std::process::id()
/// }
///
/// #[multiproc::main]
/// fn main() -> multiproc::Result<()> {
///     // Still an ordinary function...
///     assert_eq!(greet("here".into(), 1), "hello here! ");
///     // ...that also runs in another process.
///     let p = greet.spawn(("there".into(), 2))?;
///     assert_eq!(p.join()?, "hello there! hello there! ");
///     let p = Process::builder().name("who").start(&pid, ())?;
///     assert_ne!(p.join()?, std::process::id());
///     // A pool's tasks are registered functions too.
///     let pool = Pool::new(2)?;
///     let items = [("a".to_string(), 1), ("b".to_string(), 0)];
///     assert_eq!(pool.map(&greet, &items)?, ["hello a! ", ""]);
///     Ok(())
/// }
/// ```
///
/// A borrowed argument does not build, with the owned type to take instead:
///
/// ```compile_fail
/// #[multiproc::func]
/// fn count_words(text: &str) -> usize { text.split_whitespace().count() }
/// ```
#[proc_macro_attribute]
pub fn func(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return syn::Error::new(
            proc_macro2::Span::call_site(),
            "#[multiproc::func] takes no arguments",
        )
        .to_compile_error()
        .into();
    }
    let f = parse_macro_input!(item as ItemFn);
    match expand_func(&f) {
        Ok(ts) => ts.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn expand_func(f: &ItemFn) -> syn::Result<proc_macro2::TokenStream> {
    let sig = &f.sig;
    let reject = |what: &str, span: proc_macro2::Span| {
        Err(syn::Error::new(
            span,
            format!("#[multiproc::func] cannot register {what}"),
        ))
    };
    if !sig.generics.params.is_empty() {
        return reject(
            "a generic function: give it concrete types",
            sig.generics.params[0].span_ref(),
        );
    }
    if sig.asyncness.is_some() {
        return reject("an async function", sig.ident.span());
    }
    if sig.variadic.is_some() {
        return reject("a variadic function", sig.ident.span());
    }
    let mut types = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(r) => {
                return reject("a method (a function with `self`)", r.self_token.span);
            }
            FnArg::Typed(t) => {
                if let Type::Reference(r) = &*t.ty {
                    return Err(syn::Error::new_spanned(
                        r,
                        format!(
                            "#[multiproc::func] arguments travel by value to another process: \
                             take `{}` instead of a reference",
                            owned_form(&r.elem)
                        ),
                    ));
                }
                types.push((*t.ty).clone())
            }
        }
    }
    let ident = &sig.ident;
    let names: Vec<_> = (0..types.len())
        .map(|i| format_ident!("__arg{}", i))
        .collect();
    let (pattern, ty) = match types.len() {
        0 => (quote!(()), quote!(())),
        1 => {
            let (n, t) = (&names[0], &types[0]);
            (quote!(#n), quote!(#t))
        }
        _ => (quote!((#(#names,)*)), quote!((#(#types,)*))),
    };
    let _ = &ReturnType::Default;
    Ok(quote! {
        #f

        const _: () = {
            #[::multiproc::__private::linkme::distributed_slice(::multiproc::__private::FUNCTIONS)]
            #[linkme(crate = ::multiproc::__private::linkme)]
            static __MULTIPROC_ENTRY: ::multiproc::__private::Entry = ::multiproc::__private::Entry {
                name: || ::std::any::type_name_of_val(&#ident),
                invoke: |__bytes, __fds, __out| {
                    let #pattern: #ty = ::multiproc::__private::decode_args(__bytes, __fds)?;
                    ::multiproc::__private::encode_result(&#ident(#(#names),*), __out)
                },
            };
        };
    })
}

/// The owned type a borrowed argument type `&T` should become: `String` for `str`, `Vec<T>`
/// for `[T]`, `T` otherwise.
fn owned_form(elem: &Type) -> String {
    match elem {
        Type::Path(p) if p.path.is_ident("str") => "String".into(),
        Type::Slice(s) => {
            let t = &s.elem;
            format!("Vec<{}>", quote!(#t))
        }
        t => quote!(#t).to_string(),
    }
}

trait SpanRef {
    fn span_ref(&self) -> proc_macro2::Span;
}

impl SpanRef for syn::GenericParam {
    fn span_ref(&self) -> proc_macro2::Span {
        use syn::spanned::Spanned;
        self.span()
    }
}

/// Optional on `main`: a program's children are ended at its exit without it.
///
/// Whenever a program that started children exits (`main` returns or panics,
/// `std::process::exit` is called), multiproc first terminates its daemonic children and
/// joins the others, as Python does at interpreter exit, from an exit handler (`atexit`)
/// registered before `main`. This attribute adds exactly two things:
///
/// - that same clean-up at the end of `main`'s body, when it returns or unwinds, instead of
///   in the exit handler (after the runtime has flushed standard output);
/// - a call to `multiproc::init()` first, which turns a re-run binary into the child it was
///   started as if the life-before-main hook could not (on Linux that hook always runs).
///
/// A `SIGKILL` or `panic = "abort"` skips both; daemonic children still die with the
/// program then. `main` may return anything it could return without the attribute.
///
/// ```
/// use std::time::Duration;
/// use multiproc::{Func, Process};
///
/// #[multiproc::func]
/// fn idle(ms: u64) {
///     std::thread::sleep(Duration::from_millis(ms));
/// }
///
/// #[multiproc::main]
/// fn main() -> multiproc::Result<()> {
///     // A daemonic child left running is terminated when `main` returns...
///     let _watcher = Process::builder().daemon(true).start(&idle, 60_000)?;
///     // ...and a non-daemonic one is joined: `main` ends after it does.
///     let _worker = idle.spawn(10)?;
///     Ok(())
/// }
/// ```
#[proc_macro_attribute]
pub fn main(_attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut f = parse_macro_input!(item as ItemFn);
    let body = &f.block;
    f.block = syn::parse_quote!({
        let __multiproc_guard = ::multiproc::__private::MainGuard::new();
        #body
    });
    quote!(#f).into()
}

/// `#[test]` that ends every child the test started, so that no test leaves a process
/// behind: when the test returns, daemonic children are terminated and the others joined;
/// when it fails, all are terminated (killed if still there 5 s later), since a failed
/// test wants nothing more from them and may be what they wait for.
///
/// The children started on the test's own thread are the test's, and so are those started
/// on threads it spawned when the harness runs one test at a time (`cargo nextest`, or
/// `cargo test` with `--test-threads=1`). With tests side by side in one process, such a
/// child cannot be told from another test's; the harness's exit ends it, as it ends a
/// plain `#[test]`'s children (daemonic ones terminated, the others joined).
///
/// It takes what `#[test]` takes, returning `()` or a `Result`, and combines with
/// `#[should_panic]` and `#[ignore]`. Children need nothing else in tests: a re-run test
/// binary becomes the child before the harness starts, under `cargo test` and
/// `cargo nextest` alike.
///
/// ```
/// #[multiproc::func]
/// fn square(x: u64) -> u64 { x * x }
///
/// #[multiproc::func]
/// fn idle(ms: u64) {
///     std::thread::sleep(std::time::Duration::from_millis(ms));
/// }
///
/// // In a test module (`#[cfg(test)] mod tests`) or a file of `tests/`:
/// mod tests {
///     use multiproc::Func;
///
///     #[multiproc::test]
///     fn squares_in_a_child() -> multiproc::Result<()> {
///         let p = super::square.spawn(7)?;
///         assert_eq!(p.join()?, 49);
///         Ok(())
///     }
///
///     #[multiproc::test]
///     #[should_panic(expected = "gave up")]
///     fn a_failing_test_ends_its_children() {
///         let _stuck = super::idle.spawn(60_000).unwrap(); // terminated when the test fails
///         panic!("gave up");
///     }
/// }
/// # fn main() {}
/// ```
///
/// (Doctests are built without `--test`, so this one only checks that the functions outside
/// the tests build; the crate's own test files use the attribute as above, for example
/// `crates/multiproc/tests/manager_basic.rs`.)
#[proc_macro_attribute]
pub fn test(_attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut f = parse_macro_input!(item as ItemFn);
    let body = &f.block;
    f.block = syn::parse_quote!({
        let __multiproc_guard = ::multiproc::__private::TestGuard::new();
        #body
    });
    quote!(#[::core::prelude::v1::test] #f).into()
}

/// Serves a type from a manager: on an `impl` block, generates `<Type>Proxy` with one method
/// per method of the block (same name and parameters, returning
/// `Result<_, multiproc::ManagerError>`), implements `multiproc::manager::Managed` for the
/// type, and registers it so that a manager running this binary can create it
/// (`manager.create(value)`).
///
/// The type must be `Serialize + DeserializeOwned + Send + 'static`; methods take `&self` or
/// `&mut self`, owned parameters (or `&str`, `&[T]`, `&T`, received as their owned forms) and
/// return a serializable value. Methods without `self` stay as they are.
///
/// The server runs one method of an object at a time, to the end: a method is atomic with
/// respect to every other call on that object (from any process), so a read-modify-write
/// needs no lock. A method that panics comes back as `ManagerError::Panicked` and the object
/// stays usable.
///
/// ```
/// use std::collections::HashMap;
/// use multiproc::Func;
/// use multiproc::manager::Manager;
///
/// #[derive(Default, serde::Serialize, serde::Deserialize)]
/// struct WordCounts {
///     counts: HashMap<String, u64>,
/// }
///
/// #[multiproc::managed]
/// impl WordCounts {
///     /// Adds a batch of counts (generated as `WordCountsProxy::add`).
///     fn add(&mut self, batch: HashMap<String, u64>) {
///         for (word, n) in batch {
///             *self.counts.entry(word).or_default() += n;
///         }
///     }
///
///     fn count(&self, word: &str) -> u64 {
///         self.counts.get(word).copied().unwrap_or(0)
///     }
///
///     fn new_empty() -> Self { Self::default() } // no `self`: stays a plain function
/// }
///
/// #[multiproc::func]
/// fn count_words(text: String, totals: WordCountsProxy) {
///     let mut batch = HashMap::new();
///     for w in text.split_whitespace() {
///         *batch.entry(w.to_string()).or_insert(0) += 1;
///     }
///     totals.add(batch).expect("the manager is there"); // one call, applied atomically
/// }
///
/// #[multiproc::main]
/// fn main() -> multiproc::Result<()> {
///     let mgr = Manager::start()?; // runs this binary, which has the impl
///     let totals: WordCountsProxy = mgr.create(WordCounts::new_empty())?;
///     let workers = ["a rose is a rose", "is a rose"]
///         .map(|t| count_words.spawn((t.to_string(), totals.clone())));
///     for w in workers {
///         w?.join()?;
///     }
///     assert_eq!(totals.count("rose")?, 3);
///     assert_eq!(totals.count("a")?, 3);
///     assert_eq!(totals.count("tulip")?, 0);
///     Ok(())
/// }
/// ```
#[proc_macro_attribute]
pub fn managed(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return syn::Error::new(
            proc_macro2::Span::call_site(),
            "#[multiproc::managed] takes no arguments",
        )
        .to_compile_error()
        .into();
    }
    let imp = parse_macro_input!(item as ItemImpl);
    match expand_managed(&imp) {
        Ok(ts) => ts.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

/// The owned type a parameter of type `ty` is received as.
fn owned_type(ty: &Type) -> Type {
    match ty {
        Type::Reference(r) => match &*r.elem {
            Type::Path(p) if p.path.is_ident("str") => syn::parse_quote!(::std::string::String),
            Type::Slice(s) => {
                let e = &s.elem;
                syn::parse_quote!(::std::vec::Vec<#e>)
            }
            other => other.clone(),
        },
        other => other.clone(),
    }
}

fn expand_managed(imp: &ItemImpl) -> syn::Result<proc_macro2::TokenStream> {
    use syn::spanned::Spanned;
    if let Some((_, path, _)) = &imp.trait_ {
        return Err(syn::Error::new(
            path.span(),
            "#[multiproc::managed] goes on an inherent impl block, not a trait impl",
        ));
    }
    if !imp.generics.params.is_empty() {
        return Err(syn::Error::new(
            imp.generics.span(),
            "#[multiproc::managed] cannot serve a generic impl: give it concrete types",
        ));
    }
    let self_ty = &imp.self_ty;
    let Type::Path(tp) = &**self_ty else {
        return Err(syn::Error::new(self_ty.span(), "expected a named type"));
    };
    let ident = &tp
        .path
        .segments
        .last()
        .ok_or_else(|| syn::Error::new(self_ty.span(), "expected a named type"))?
        .ident;
    let proxy = format_ident!("{}Proxy", ident);
    let mut methods = Vec::new();
    let mut async_methods = Vec::new();
    let mut arms = Vec::new();
    for item in &imp.items {
        let ImplItem::Fn(f) = item else { continue };
        let sig = &f.sig;
        let Some(FnArg::Receiver(recv)) = sig.inputs.first() else {
            continue; // associated functions stay local
        };
        if recv.reference.is_none() {
            return Err(syn::Error::new(
                recv.span(),
                "a managed method takes `&self` or `&mut self` (the value stays in the manager)",
            ));
        }
        if !sig.generics.params.is_empty() || sig.asyncness.is_some() {
            return Err(syn::Error::new(
                sig.ident.span(),
                "a managed method cannot be generic or async",
            ));
        }
        let name = &sig.ident;
        let method = name.to_string();
        let mut params = Vec::new();
        let mut names = Vec::new();
        let mut owned = Vec::new();
        let mut call_args = Vec::new();
        for (i, input) in sig.inputs.iter().skip(1).enumerate() {
            let FnArg::Typed(t) = input else { continue };
            let n = format_ident!("__a{}", i);
            let ty = &*t.ty;
            params.push(quote!(#n: #ty));
            owned.push(owned_type(ty));
            call_args.push(if matches!(ty, Type::Reference(_)) {
                quote!(&#n)
            } else {
                quote!(#n)
            });
            names.push(n);
        }
        let ret = match &sig.output {
            ReturnType::Default => quote!(()),
            ReturnType::Type(_, t) => quote!(#t),
        };
        let docs = f.attrs.iter().filter(|a| a.path().is_ident("doc"));
        let vis = &f.vis;
        methods.push(quote! {
            #(#docs)*
            #vis fn #name(&self, #(#params),*) -> ::std::result::Result<#ret, ::multiproc::ManagerError> {
                ::multiproc::manager::ProxyType::proxy(self).call(#method, &(#(#names,)*))
            }
        });
        let async_name = format_ident!("{}_async", name);
        let async_doc = format!(
            "[`{method}`](Self::{method}) awaited, without blocking a thread (feature `tokio` of \
             multiproc). Cancel safety as [`Proxy::call_async`](::multiproc::manager::Proxy::call_async): \
             a dropped future closes the call's connection; the method ran or not."
        );
        async_methods.push(quote! {
            #[doc = #async_doc]
            #vis fn #async_name(&self, #(#params),*) -> #ret { #method (#(#names),*) }
        });
        arms.push(quote! {
            #method => {
                let (#(#names,)*): (#(#owned,)*) = ::multiproc::manager::__args(__args)?;
                ::multiproc::manager::__ret(&self.#name(#(#call_args),*))
            }
        });
    }
    let doc = format!(
        "Proxy of a [`{ident}`] served by a manager: its methods, called in the manager's process."
    );
    Ok(quote! {
        #imp

        #[doc = #doc]
        #[derive(Clone, Debug)]
        pub struct #proxy(::multiproc::manager::Proxy);

        impl #proxy {
            #(#methods)*
        }

        ::multiproc::__managed_async! {
            impl #proxy {
                #(#async_methods)*
            }
        }

        impl ::multiproc::manager::ProxyType for #proxy {
            fn kind() -> ::std::string::String {
                ::multiproc::manager::__kind::<#self_ty>()
            }
            fn from_proxy(proxy: ::multiproc::manager::Proxy) -> Self {
                #proxy(proxy)
            }
            fn proxy(&self) -> &::multiproc::manager::Proxy {
                &self.0
            }
        }

        impl ::multiproc::__private::serde::Serialize for #proxy {
            fn serialize<S: ::multiproc::__private::serde::Serializer>(
                &self,
                s: S,
            ) -> ::std::result::Result<S::Ok, S::Error> {
                ::multiproc::__private::serde::Serialize::serialize(&self.0, s)
            }
        }

        impl<'de> ::multiproc::__private::serde::Deserialize<'de> for #proxy {
            fn deserialize<D: ::multiproc::__private::serde::Deserializer<'de>>(
                d: D,
            ) -> ::std::result::Result<Self, D::Error> {
                <::multiproc::manager::Proxy as ::multiproc::__private::serde::Deserialize>::deserialize(d)
                    .map(#proxy)
            }
        }

        impl ::multiproc::manager::Managed for #self_ty {
            type Proxy = #proxy;

            fn __dispatch(
                &mut self,
                __method: &str,
                __args: &[u8],
            ) -> ::std::result::Result<::std::vec::Vec<u8>, ::multiproc::manager::__Fault> {
                match __method {
                    #(#arms)*
                    _ => ::std::result::Result::Err(::multiproc::manager::__unknown::<Self>(__method)),
                }
            }
        }

        const _: () = {
            #[::multiproc::__private::linkme::distributed_slice(::multiproc::manager::MANAGED_TYPES)]
            #[linkme(crate = ::multiproc::__private::linkme)]
            static __MULTIPROC_MANAGED: ::multiproc::manager::ManagedEntry =
                ::multiproc::manager::ManagedEntry {
                    kind: ::multiproc::manager::__kind::<#self_ty>,
                    create: ::multiproc::manager::__create::<#self_ty>,
                };
        };
    })
}
