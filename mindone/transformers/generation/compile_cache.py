"""What a compiled generate() graph needs so that MindSpore's compile cache can load it in another process.

A graph loaded from MindSpore's compile cache (mindspore 2.7.1) binds its parameters by name to the compiled
cell's `parameters_dict()`; a parameter the cell does not own gets an uninitialised buffer of its shape."""

from mindspore import Parameter, nn


# ---------------------------------------------------------------- parameters a graph reads
def own_parameters(cell: nn.Cell) -> None:
    """Registers with `cell` every parameter its graph can reach that no cell of its tree owns - such as the packed
    layer weights (layers.PackedWeights, QuantizedLayerWeights), which the layers keep outside their parameter tree
    so that the state_dict is unchanged. A graph loaded from MindSpore's compile cache binds parameters by name to
    the compiled cell's `parameters_dict()`; any other parameter gets an uninitialised buffer of its shape."""
    owned = {id(p) for p in cell.get_parameters()}
    for param in _hidden_parameters(cell):
        if id(param) not in owned:
            owned.add(id(param))
            cell.insert_param_to_cell(f"owned.{param.name}", param, check_name_contain_dot=False)
    names = [p.name for p in cell.get_parameters()]
    if len(set(names)) != len(names):  # two parameters of one name: a loaded graph would bind one for both
        cell.__dict__["_compile_cache_unsafe"] = "parameters share a name"


def _hidden_parameters(root: nn.Cell):
    for cell in _cells(root):
        yield from (p for p in cell._params.values() if p is not None)
        for name, value in vars(cell).items():
            if isinstance(value, Parameter) and not name.startswith("_"):
                yield value


def _cells(root: nn.Cell) -> list:
    """Every cell reachable from `root`: its registered tree, plus cells stored on a cell directly under a public
    attribute (also inside lists, tuples and dicts), depth first and without repeats. Private attributes are
    bookkeeping (MindSpore's, or a model's compiled steps and caches), not parts of the model."""
    seen, order, stack = set(), [], [root]
    while stack:
        cell = stack.pop()
        if id(cell) in seen:
            continue
        seen.add(id(cell))
        order.append(cell)
        children = list(cell._cells.values())
        for name, value in vars(cell).items():
            if not name.startswith("_"):
                children += _cells_in(value)
        stack += reversed([c for c in children if c is not None])
    return order


def _cells_in(value) -> list:
    if isinstance(value, nn.Cell):
        return [value]
    if isinstance(value, (list, tuple)):
        return [c for v in value for c in _cells_in(v)]
    if isinstance(value, dict):
        return [c for v in value.values() for c in _cells_in(v)]
    return []
