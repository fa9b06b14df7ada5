# The two commands of the Quick start. Both bootstrap .venv (and Debian packages) themselves.
.PHONY: demo test lint schemas

demo:
	@scripts/bootstrap --build
	.venv/bin/edgectl demo

test:
	@scripts/bootstrap --test
	.venv/bin/ruff check reconciler tests bench
	.venv/bin/lint-imports
	@# pytest exits 5 when it collected nothing: say so plainly, it is a broken suite, not a pass.
	.venv/bin/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo 'make test: pytest collected no tests' >&2; fi; exit $$rc

lint:
	@scripts/bootstrap --test
	.venv/bin/ruff check reconciler tests bench
	.venv/bin/ruff format --check reconciler tests bench
	.venv/bin/lint-imports

schemas:
	@scripts/bootstrap
	.venv/bin/edgectl schema export schemas/
