"""The portal's Jinja environment: Flask's, with two per-call costs of the template runtime taken
out. What a template prints is unchanged, byte for byte (tests/test_templating.py).

- Every `{{ value }}` of an autoescaped template became `markupsafe.escape(value)`: the escaped
  text wrapped in a new Markup object (a Python-level `__new__` with its own `__html__` check),
  only to be joined into the page's text at once. Printed values are escaped to plain `str`
  instead (the same characters: Markup's own escaping function); the joined output of a block,
  macro or `{% set %}` is still made Markup by Jinja, as before.
- Every call in a template went through `Context.call`, which asks the function twice whether it
  wants the context passed (`hasattr`, an AttributeError raised and caught each time, ~120 calls
  a page). A function's mark is read from its own __dict__ at no such cost; a macro or a
  builtin has none.
"""

from __future__ import annotations

import types
from typing import Any

from flask.templating import Environment
from jinja2 import nodes, pass_context, pass_environment, pass_eval_context
from jinja2.compiler import CodeGenerator, Frame
from jinja2.runtime import Context, Macro
from markupsafe import escape

try:
    from markupsafe._speedups import _escape_inner
except ImportError:  # pragma: no cover - markupsafe without its C speedups

    def _escape_inner(text: str, /) -> str:
        return str.__str__(escape(text))


def escape_for_output(value: Any, /) -> str:
    """`str(markupsafe.escape(value))` without making the Markup object: for printed values only,
    which Jinja joins into text (and wraps in Markup itself wherever the result is kept).

    A value with `__html__` comes back as what that returns (often Markup itself): call `str()`
    on the answer before using a string method on it (Markup's would escape its arguments)."""
    if type(value) is str:
        return _escape_inner(value)
    html = getattr(value, "__html__", None)
    if html is not None:
        return html()  # type: ignore[no-any-return]
    return _escape_inner(str(value))


class PortalCodeGenerator(CodeGenerator):
    """Prints through `escape_for_output`; every other line of the compiled template is Jinja's."""

    def visit_Template(self, node: nodes.Template, frame: Frame | None = None) -> None:
        super().visit_Template(node, frame)
        # NOTE: the render functions look `escape` up in the module's globals when they run, so
        # binding it after Jinja's own `from jinja2.runtime import escape` reaches every one of
        # them; the compiler writes `escape(` only around printed values (`{{ … }}`).
        self.writeline("from portal.templating import escape_for_output as escape")


def _mark_of(decorator: Any) -> Any:
    def probe() -> None: ...

    return decorator(probe).jinja_pass_arg


# The marks Jinja's pass_* decorators set on a function (`jinja_pass_arg`, in its __dict__);
# there are no others.
_CONTEXT = _mark_of(pass_context)
_EVAL_CONTEXT = _mark_of(pass_eval_context)
_ENVIRONMENT = _mark_of(pass_environment)


class PortalContext(Context):
    # NOTE: the odd parameter names are Jinja's own (they cannot collide with keyword arguments).
    def call(__self, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        kind = type(__obj)
        if kind is types.FunctionType:
            # A function's mark sits in its __dict__: read without the AttributeError a
            # getattr of a missing attribute raises (and Jinja's hasattr asks twice).
            mark = __obj.__dict__.get("jinja_pass_arg")
        elif kind is types.BuiltinFunctionType or kind is Macro:
            mark = None  # a builtin cannot be marked; Macro.__call__ has no mark
        else:
            return super().call(__obj, *args, **kwargs)  # a callable object: Jinja's own path
        if mark is _CONTEXT:
            # Jinja's own path: it hands a context-taking function what a loop or block set.
            return super().call(__obj, *args, **kwargs)
        if kwargs:
            kwargs.pop("_block_vars", None)
            kwargs.pop("_loop_vars", None)
        if mark is _EVAL_CONTEXT:
            args = (__self.eval_ctx, *args)
        elif mark is _ENVIRONMENT:
            args = (__self.environment, *args)
        try:
            return __obj(*args, **kwargs)
        except StopIteration:
            return __self.environment.undefined(
                "value was undefined because a callable raised a StopIteration exception"
            )


class PortalEnvironment(Environment):
    code_generator_class = PortalCodeGenerator
    context_class = PortalContext
