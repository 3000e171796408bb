"""Everything a method file needs, imported by ``from locbench import ...`` (see
:mod:`locbench`). The contract each name is part of is written out in
:mod:`locbench.methods.base`."""

from locbench.errors import UserError
from locbench.methods.base import (
    METHODS,
    Batch,
    Capabilities,
    Cut,
    Method,
    ModulesView,
    NoParams,
    Paths,
    StepContext,
    register,
)  # fmt: skip
from locbench.methods.params import param
from locbench.nets.backbone import Backbone, Shape, build_unit, spatial_size
from locbench.nets.split import Split

#: The public names, each once: ``locbench.__getattr__`` serves them from here.
PUBLIC = {
    "METHODS": METHODS,
    "Backbone": Backbone,
    "Batch": Batch,
    "Capabilities": Capabilities,
    "Cut": Cut,
    "Method": Method,
    "ModulesView": ModulesView,
    "NoParams": NoParams,
    "Paths": Paths,
    "Shape": Shape,
    "Split": Split,
    "StepContext": StepContext,
    "UserError": UserError,
    "build_unit": build_unit,
    "param": param,
    "register": register,
    "spatial_size": spatial_size,
}
