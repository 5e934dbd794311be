"""Name -> object registries (models, datasets, methods), with a suggestion for a mistyped name."""
import difflib


def suggest(word, choices):
    """'did you mean X?' for a mistyped name, else the allowed names."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(sorted(map(str, choices)))}"


def check_choice(what, value, choices):
    """A named option (`train.optimizer`, `method_args.mode`) must be one of `choices`; the error
    says which, with a suggestion for a typo."""
    if value not in choices:
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"{what} {value!r} unknown; use one of {', '.join(map(str, choices))}{hint}")


class Registry:
    def __init__(self, kind):
        self.kind, self._items = kind, {}

    def register(self, name, obj=None):
        """`registry.register(name, obj)`, or `@registry.register(name)` on a function or class."""
        if obj is not None:
            self._items[name] = obj
            return obj
        return lambda fn: self.register(name, fn)

    def names(self):
        return sorted(self._items)

    def get(self, name):
        if name not in self._items:
            close = difflib.get_close_matches(str(name), self._items, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known {self.kind}s: {', '.join(self.names())}"
            raise KeyError(f"unknown {self.kind} {name!r}; {hint}")
        return self._items[name]
