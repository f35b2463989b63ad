from lorasweep.cli import app

if __name__ == "__main__":  # not when a spawned shard process imports it (sharding.py)
    app(prog_name="lorasweep")
