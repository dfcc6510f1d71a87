"""The controllers' home: one control surface for every controller.

    surface.py     ControlSurface: handle(address, args, sender) in; add_outlet(fn(address, args)) out
    commands.py    the command table (name, arguments, doc, OSCQuery type/range/value, handler)
    routes.py      address → parameter or command (the namespace, aliases, StreamDiffusionTD's names)
    coerce.py      what controllers send → the registry's types, and back
    messages.py    echoes, errors and the status table
    transition.py  /transition: the duration of the changes that follow, shared by every transport
    nodes.py       the OSCQuery nodes;  docs.py  the README's tables
    osc.py         OSC, one transport (MIDI and Link will be one module each, beside it)

A transport is one module: it turns its protocol's input into `surface.handle(address, args, sender)` calls and
registers an outlet for what goes back. It copies nothing of the routing, coercion or validation.
"""
