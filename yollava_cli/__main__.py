from yollava_cli.cli import main

main()
