"""Name -> object registries (models, datasets, methods), with a suggestion for a mistyped name."""
import difflib


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
            close = difflib.get_close_matches(name, self._items, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known {self.kind}s: {', '.join(self.names())}"
            raise KeyError(f"unknown {self.kind} {name!r}; {hint}")
        return self._items[name]
