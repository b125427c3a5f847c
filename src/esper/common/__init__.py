"""What several rooms share: the factored-action declaration an environment provides and the
algorithm consumes, and the Adam step both the host and the policy train with.

Imports no other esper package.
"""
