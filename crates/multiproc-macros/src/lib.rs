//! Attribute macros of `multiproc`; use them through the `multiproc` crate:
//! `#[multiproc::func]`, `#[multiproc::main]`, `#[multiproc::test]`.

use proc_macro::TokenStream;
use quote::{format_ident, quote};
use syn::{FnArg, ItemFn, ReturnType, parse_macro_input};

/// Registers a function so that a child process can run it: `f.spawn(args)` or
/// `Process::builder().start(&f, args)`.
///
/// The function stays an ordinary function. Its arguments and result must be
/// `Serialize + DeserializeOwned`; it may not be generic, `async` or a method.
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
            FnArg::Typed(t) => types.push((*t.ty).clone()),
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

trait SpanRef {
    fn span_ref(&self) -> proc_macro2::Span;
}

impl SpanRef for syn::GenericParam {
    fn span_ref(&self) -> proc_macro2::Span {
        use syn::spanned::Spanned;
        self.span()
    }
}

/// Wraps `main`: a re-run child is intercepted first (if the life-before-main hook could not),
/// and when `main` returns or unwinds, daemonic children are terminated and the others
/// joined, as Python does at exit.
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

/// `#[test]` that ends the children the test started (daemons terminated, others joined)
/// when it returns or fails, so no test leaves a process behind.
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
