"""The commands, one module each, above the library: each turns a typed job (a [`ModelSource`] dataclass) into work
and files. `darkminer.cli` parses arguments into these jobs; nothing in the library imports from here.
"""
