"""leuk: classify acute lymphoblastic leukemia from peripheral blood smear images."""

from leuk.config.resolvers import register_resolvers

__version__ = "0.1.0"

register_resolvers()
